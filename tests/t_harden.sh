#!/usr/bin/env bash
# Issue 8, part A: a regression check for each hostile-input defect (A.1-A.16)
# and for what came with the fixes. tests/hostile.py holds one function per
# group of hostile inputs:
#   A.1 ws_pings  A.2 ws_fragments  A.3 http_trailers  A.4 svc_headers
#   A.5 http_percap  A.6 jwt  A.7 svc_routes  A.8 svc_push  A.9 svc_register
#   A.10 cors  A.11 http_framing  A.12 http_expect  A.13 http_params
#   A.14 svc_inbound  A.15 jwks  A.16 cli (here) and http_local
#   lingering close: linger; NOT_DELIVERED / delivered: svc_push, svc_shutdown;
#   the 60 s idle limit: idle (a linkd of its own, watched in the background)
# This driver runs each group against one linkd and, after each, checks that
# linkd is alive (/health 200), that its RSS is under its boot RSS + 24 MiB
# (x16 under ASan, valgrind or qemu), that linkd_http_connections /
# linkd_ws_connections / linkd_pending_replies are back to what they were
# before the group, and that the three test services are still registered.
# Then the "loop" phase runs every client-side group HARDEN_LOOPS (3) more
# times against the same linkd, with the same checks after each group, and
# checks that RSS does not keep growing from one round to the next (issue 8
# part C). svc_shutdown comes last: it stops linkd with SIGTERM.
#   HARDEN_GROUPS="jwt cors" tests/t_harden.sh   # some groups only (any order is run in the usual order)
#   HARDEN_LOOPS=0 tests/t_harden.sh             # no loop phase
#   LINKD_CMD=/tmp/wt/linkd tests/t_harden.sh    # a linkd from before the fixes: the checks show each defect
# A group that kills linkd (or leaves it over the RSS bound) is reported and
# linkd restarted, so the later groups still run. Settings linkd gained with
# the fixes go in the environment (LINKD_MAX_HTTP_CONNECTIONS_PER_IP,
# LINKD_REGISTER_TIMEOUT): a linkd that predates them ignores them and starts.
. "$(dirname "$0")/lib.sh"

SECRET=harden-secret
CLIENT_GROUPS=(ws_pings ws_fragments linger http_trailers http_framing http_expect http_params http_local http_percap cors jwt jwks)
SVC_GROUPS=(svc_headers svc_routes svc_push svc_register svc_inbound)
LOOPS=${HARDEN_LOOPS:-3}
SEL=" ${HARDEN_GROUPS:-cli idle ${CLIENT_GROUPS[*]} ${SVC_GROUPS[*]} svc_shutdown} "
selected() { [[ $SEL == *" $1 "* ]]; }
case "${LINKD_CMD:-}" in *asan*|*valgrind*|*qemu*) RSS_SCALE=16 ;; *) RSS_SCALE=1 ;; esac
# ASan holds freed memory in a quarantine (256 MiB by default): RSS would grow
# round after round until it is full. A small one keeps the loop's RSS check
# meaningful (use-after-free is still caught for recent frees).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=16"
RSS_ALLOW_MB=$((24 * RSS_SCALE))
GROUP_TIMEOUT=$((60 * T_SLOW))
export HARDEN_NAME=$T_NAME LINKD_CMD

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$LINKD_PID/status" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---- A.16: flags, environment and config file errors; --help (no linkd running)
if selected cli; then
  out=$("${LINKD[@]}" --listen 3000 --check-config 2>&1); rc=$?
  expect_eq "cli: --listen 3000 exits 2" "$rc" 2
  expect_match "cli: ... the message repeats the value and its source" "$out" "'3000' \(from flag --listen\)"
  out=$(LINKD_LISTEN=:3000 "${LINKD[@]}" --check-config 2>&1); rc=$?
  expect_eq "cli: LINKD_LISTEN=:3000 exits 2" "$rc" 2
  expect_match "cli: ... the message repeats the value and its source" "$out" "':3000' \(from environment LINKD_LISTEN\)"
  out=$("${LINKD[@]}" --listen --socket "$T_TMP/x.sock" --check-config 2>&1); rc=$?
  expect_eq "cli: --listen --socket x exits 2" "$rc" 2
  expect_match "cli: ... saying --listen's value is missing" "$out" "--listen: missing value"
  printf '# harden\nmax_connections = 100\nmax_message_size = lots\n' >"$T_TMP/bad.conf"
  out=$("${LINKD[@]}" --config "$T_TMP/bad.conf" --check-config 2>&1); rc=$?
  expect_eq "cli: a config file value error exits 2" "$rc" 2
  expect_match "cli: ... naming file:line" "$out" "$T_TMP/bad.conf:3"
  out=$("${LINKD[@]}" --help 2>&1)
  expect_match "cli: --help shows --max-connections' default" "$(grep -A1 -- '--max-connections ' <<<"$out")" '\(default: 10000\)'
  expect_match "cli: --help shows --max-message-size's default" "$(grep -A1 -- '--max-message-size ' <<<"$out")" '\(default: 64k\)'
fi

# ---- keys for the jwks group, made before linkd reads them
if ! $PY "$TESTS/hostile.py" makekeys "$T_TMP" 2>"$T_TMP/makekeys.err"; then
  fail "make JWKS keys and tokens" "$(tail -n 2 "$T_TMP/makekeys.err" | tr '\n' ' ')"
fi

# ---- an idle keep-alive connection on a linkd of its own, watched for 65 s in the background
IDLE_WATCH=
if selected idle; then
  if LINKD_SOCK=$T_TMP/idle.sock linkd_start --log-level warn; then
    $PY -u "$TESTS/hostile.py" idle_watch --port "$LINKD_PORT" --pid "$LINKD_PID" --slow "$T_SLOW" >"$T_TMP/idle.out" 2>"$T_TMP/idle.err" &
    IDLE_WATCH=$!
    track "$IDLE_WATCH"
  fi
  unset LINKD_PORT LINKD_SOCK
fi

# ---- the linkd the groups run against, and its three services
FLAGS=(--jwt-secret "$SECRET" --jwt-keys "$T_TMP/jwks.json" --max-outbound 256k --max-http-connections 20
       --allowed-origins 'https://a.example,*' --log-level info)
SVC_N=0
svcs_up() {   # (re)starts whichever of hmain / hauth / hsmall is not running
  SVC_N=$((SVC_N+1))
  if [ -z "${SVC_PIDS[main]:-}" ] || ! kill -0 "${SVC_PIDS[main]}" 2>/dev/null; then
    svc_start main --name hmain --ws /ws --route 'GET /items/:id' --route 'POST /up' --route 'GET /private auth' \
      --route 'POST /private auth' --route 'GET /users/:id auth' --route 'GET /users/stats' --route '* /api/:x' \
      || fail "service hmain registers" "$(tail -n 2 "$SVC_OUT" | tr '\n' ' ')"
  fi
  if [ -z "${SVC_PIDS[auth]:-}" ] || ! kill -0 "${SVC_PIDS[auth]}" 2>/dev/null; then
    svc_start auth --name hauth --ws /wsauth --ws-auth --max-per-user 1 \
      || fail "service hauth registers" "$(tail -n 2 "$SVC_OUT" | tr '\n' ' ')"
  fi
  if [ -z "${SVC_PIDS[small]:-}" ] || ! kill -0 "${SVC_PIDS[small]}" 2>/dev/null; then
    svc_start small --name hsmall --ws /wssmall --route 'POST /small' --max-inbound 32768 \
      || fail "service hsmall registers" "$(tail -n 2 "$SVC_OUT" | tr '\n' ' ')"
  fi
}
boot() {
  LINKD_MAX_HTTP_CONNECTIONS_PER_IP=5 LINKD_REGISTER_TIMEOUT=500ms linkd_start "${FLAGS[@]}" || return 1
  MAIN_PID=$LINKD_PID
  svcs_up
  wait_for 5 metric_is linkd_service_instances 3
  RSS_BOOT=$(rss_kb)
  log "linkd $LINKD_PID booted: RSS $(mib "$RSS_BOOT") MiB; bound after each group: + $RSS_ALLOW_MB MiB"
}
restart() {
  kill -KILL "$LINKD_PID" 2>/dev/null
  wait "$LINKD_PID" 2>/dev/null
  svc_kill main; svc_kill auth; svc_kill small
  SVC_PIDS[main]=; SVC_PIDS[auth]=; SVC_PIDS[small]=
  boot
}

sanitizer_seen=0
# after NAME H0 W0 P0 : linkd's state after a group (gauges as they were before it)
after() {
  local n=$1 h0=$2 w0=$3 p0=$4 rss
  if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|Invalid (read|write)|uninitialised' "$LINKD_LOG" && [ $sanitizer_seen = 0 ]; then
    sanitizer_seen=1
    fail "$n: no sanitizer/valgrind report" "$(grep -m1 -A4 -E 'AddressSanitizer|runtime error:|Invalid (read|write)|uninitialised' "$LINKD_LOG" | tr '\n' ' ' | cut -c1-400)"
  fi
  if ! linkd_alive; then
    fail "$n: linkd survives" "linkd exited: $(grep -m3 -E 'ERROR|SUMMARY|Segmentation|Abort|error' "$LINKD_LOG" | tr '\n' ' ' | cut -c1-300)"
    restart; return
  fi
  if ! wait_for 3 _health_ok; then
    fail "$n: linkd answers /health" "no answer within $((3 * T_SLOW)) s (hung? $(ps -o pcpu= -p "$LINKD_PID" | tr -d ' ')% CPU)"
    restart; return
  fi
  pass "$n: linkd alive and answers /health"
  rss=$(rss_kb)
  if [ -n "$rss" ] && [ "$rss" -le $((RSS_BOOT + RSS_ALLOW_MB * 1024)) ]; then
    pass "$n: RSS under boot + $RSS_ALLOW_MB MiB"
    log "$n: RSS $(mib "$rss") MiB"
  else
    fail "$n: RSS under boot + $RSS_ALLOW_MB MiB" "RSS $(mib "$rss") MiB, boot $(mib "$RSS_BOOT") MiB (linkd restarted for the next groups)"
    restart; return
  fi
  local name want
  for name in linkd_http_connections:$h0 linkd_ws_connections:$w0 linkd_pending_replies:$p0; do
    want=${name#*:}; name=${name%%:*}
    if wait_for 5 metric_is "$name" "$want"; then pass "$n: $name back to $want"
    else fail "$n: $name back to $want" "it is $(metric "$name")"; fi
  done
  if wait_for 5 metric_is linkd_service_instances 3; then pass "$n: the three test services are still registered"
  else
    fail "$n: the three test services are still registered" "linkd_service_instances is $(metric linkd_service_instances); LINK_CLOSED in: $(grep -l LINK_CLOSED "$T_TMP"/svc.*.out 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')"
    svcs_up
  fi
}

# hostile GROUP TAG : runs one group of hostile.py (output in group.out / group.err)
hostile() {
  timeout -k 5 "$GROUP_TIMEOUT" $PY -u "$TESTS/hostile.py" "$1" --port "$LINKD_PORT" --socket "$LINKD_SOCK" --pid "$LINKD_PID" \
    --tmp "$T_TMP" --secret "$SECRET" --log "$LINKD_LOG" --svc-out "${SVC_OUTS[main]}" --svc-small "${SVC_OUTS[small]}" \
    --slow "$T_SLOW" --rss-scale "$RSS_SCALE" --tag "$2" >"$T_TMP/group.out" 2>"$T_TMP/group.err"
}

# run_group GROUP [TAG]
run_group() {
  local g=$1 tag=${2:-} h0 w0 p0 rc t0=$(date +%s%N)
  h0=$(metric linkd_http_connections); w0=$(metric linkd_ws_connections); p0=$(metric linkd_pending_replies)
  hostile "$g" "$tag"
  rc=$?
  cat "$T_TMP/group.out"
  grep '^# ' "$T_TMP/group.err" >&2
  cat "$T_TMP/group.err" >>"$T_TMP/groups.err"
  log "${tag}group $g: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then fail "$tag$g: group finished within $GROUP_TIMEOUT s" "timed out"
  elif [ $rc -ne 0 ]; then fail "$tag$g: group ran" "exit $rc: $(tail -n 3 "$T_TMP/group.err" | tr '\n' ' ' | cut -c1-300)"
  elif ! grep -q '^PASS\|^FAIL' "$T_TMP/group.out"; then fail "$tag$g: group checked something" "no PASS/FAIL lines"
  fi
  after "$tag$g" "$h0" "$w0" "$p0"
}

T0=$(date +%s)
boot || exit 0
for g in "${CLIENT_GROUPS[@]}" "${SVC_GROUPS[@]}"; do
  selected "$g" && run_group "$g"
done

# ---- the loop: the client-side groups again and again against this linkd
ROUND_RSS=()
for ((i = 1; i <= LOOPS; i++)); do
  for g in "${CLIENT_GROUPS[@]}"; do
    selected "$g" && run_group "$g" "loop$i: "
  done
  ROUND_RSS+=("$(rss_kb)")
  log "loop $i: RSS $(mib "${ROUND_RSS[-1]:-0}") MiB (pid $LINKD_PID)"
done
if [ "$LOOPS" -ge 2 ]; then
  if [ "$LINKD_PID" != "$MAIN_PID" ]; then
    fail "loop: RSS stops growing across rounds" "linkd was restarted during the run: no one process to compare"
  else
    first=${ROUND_RSS[0]} last=${ROUND_RSS[-1]}
    allow=$((2048 * RSS_SCALE))
    if [ "$last" -le $((first + allow)) ]; then
      pass "loop: RSS does not keep growing over $LOOPS rounds (at most $(mib "$allow") MiB more after the last than after the first)"
      log "loop: RSS after each round (MiB): $(for r in "${ROUND_RSS[@]}"; do printf '%s ' "$(mib "$r")"; done)"
    else
      fail "loop: RSS does not keep growing over $LOOPS rounds" "round RSS (KiB): ${ROUND_RSS[*]}; allowance $allow KiB"
    fi
  fi
fi

# ---- last: pushes during linkd's own shutdown (the group sends the SIGTERM)
if selected svc_shutdown; then
  hostile svc_shutdown ""
  rc=$?
  cat "$T_TMP/group.out"
  grep '^# ' "$T_TMP/group.err" >&2
  [ $rc -eq 0 ] || fail "svc_shutdown: group ran" "exit $rc: $(tail -n 3 "$T_TMP/group.err" | tr '\n' ' ' | cut -c1-300)"
  if wait_exit "$LINKD_PID" 15; then
    expect_eq "svc_shutdown: linkd exits 0 after the SIGTERM (no state left)" "$WAIT_RC" 0
  else
    fail "svc_shutdown: linkd exits after the SIGTERM" "still running after $((15 * T_SLOW)) s"
  fi
fi

# ---- the idle connection's verdict (it needs 65 s from the start)
if [ -n "$IDLE_WATCH" ]; then
  wait "$IDLE_WATCH"
  cat "$T_TMP/idle.out"
  grep -q '^PASS\|^FAIL' "$T_TMP/idle.out" || fail "idle_watch: ran" "$(tail -n 3 "$T_TMP/idle.err" | tr '\n' ' ')"
fi
log "t_harden: $(( $(date +%s) - T0 )) s"
exit 0
