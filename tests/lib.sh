# Common helpers for linkd's shell tests. Source it from a tests/t_*.sh script:
#   . "$(dirname "$0")/lib.sh"
# Every check prints one line: "PASS: <name>" or "FAIL: <name> — <why>".
# Scripts exit 0; tests/run.sh tallies the lines.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTS="$ROOT/tests"
export TESTS_DIR=$TESTS                # for the Python parts: sys.path.insert(0, TESTS_DIR)
PY=/usr/bin/python3                   # Debian's python: sees python3-protobuf, python3-websocket(s)
read -r -a LINKD <<< "${LINKD_CMD:-$ROOT/linkd}"
# Startup waits get longer under an emulator (qemu-*-static).
case "${LINKD_CMD:-}" in *qemu*|*valgrind*) T_SLOW=5 ;; *) T_SLOW=1 ;; esac

T_NAME=$(basename "$0" .sh)
T_TMP=$(mktemp -d "/tmp/linkd-$T_NAME.XXXXXX")
T_PIDS=()
T_FAILED=0

_t_cleanup() {
  local p
  # linkd first, while its services are still connected: it must exit 0 on
  # SIGTERM with every table empty (linkd exits 70 when state is left over).
  for p in "${LINKD_PIDS[@]}"; do _linkd_term "$p"; done
  for p in "${T_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${T_PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  if [ "${KEEP_TMP:-}" = 1 ] || { [ "$T_FAILED" -gt 0 ] && [ "${KEEP_TMP_ON_FAIL:-}" = 1 ]; }; then
    echo "# $T_NAME: files kept in $T_TMP" >&2
  else
    rm -rf "$T_TMP"
  fi
}
trap _t_cleanup EXIT
trap 'exit 1' INT TERM

# ---------- reporting
pass() { echo "PASS: $T_NAME: $1"; }
fail() { T_FAILED=$((T_FAILED+1)); echo "FAIL: $T_NAME: $1 — ${2:-failed}"; }
# check NAME CMD... : PASS if CMD succeeds; FAIL with the tail of its output otherwise.
check() {
  local name=$1; shift
  local o
  if o=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$o" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"; fi
}
# expect_eq NAME ACTUAL EXPECTED
expect_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$(echo "$2" | head -c 300)', want '$3'"; fi
}
# expect_match NAME TEXT EXTENDED-REGEX
expect_match() {
  if printf '%s' "$2" | grep -Eq -- "$3"; then pass "$1"; else fail "$1" "'$(printf '%s' "$2" | head -c 300 | tr '\n' ' ')' does not match /$3/"; fi
}
log() { echo "# $*" >&2; }

# ---------- waiting
# wait_for TIMEOUT_SECONDS CMD... : polls CMD every 50 ms until it succeeds; 1 on timeout.
wait_for() {
  local t=$1; shift
  local end=$(( $(date +%s%N) + ${t%.*} * 1000000000 * T_SLOW ))
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(date +%s%N)" -ge "$end" ] && return 1
    sleep 0.05
  done
}
# wait_exit PID TIMEOUT : waits for a child of this shell to exit and sets
# WAIT_RC to its exit status (WAIT_RC=timeout and return 1 if it is still
# running). Call it directly, not in $(...): a subshell cannot wait for it.
wait_exit() {
  local pid=$1 t=$2
  WAIT_RC=timeout
  wait_for "$t" _not_running "$pid" || return 1
  wait "$pid" 2>/dev/null; WAIT_RC=$?
  return 0
}
_not_running() { ! kill -0 "$1" 2>/dev/null; }

# ---------- resources
free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
# track PID : kill it at exit
track() { T_PIDS+=("$1"); }

# ---------- linkd
# linkd_start [flags...] : starts linkd on a free port with a socket under T_TMP
# (override with LINKD_PORT= / LINKD_SOCK= before calling). Sets LINKD_PID,
# LINKD_URL, LINKD_LOG. Returns 1 (after a FAIL line) if /health never answers.
LINKD_N=0
LINKD_PIDS=()
declare -A LINKD_LOGS
linkd_start() {
  LINKD_N=$((LINKD_N+1))
  LINKD_PORT=${LINKD_PORT:-$(free_port)}
  LINKD_SOCK=${LINKD_SOCK:-$T_TMP/linkd.sock}
  LINKD_LOG=$T_TMP/linkd.$LINKD_N.log
  LINKD_URL="http://127.0.0.1:$LINKD_PORT"
  "${LINKD[@]}" --listen "127.0.0.1:$LINKD_PORT" --socket "$LINKD_SOCK" "$@" >"$LINKD_LOG" 2>&1 &
  LINKD_PID=$!
  track "$LINKD_PID"
  LINKD_PIDS+=("$LINKD_PID")
  LINKD_LOGS[$LINKD_PID]=$LINKD_LOG
  if ! wait_for 10 _health_or_dead || ! _health_ok; then
    fail "linkd starts ($*)" "$(linkd_alive && echo "no answer on /health within 10 s" || echo "linkd exited")"\
"; log: $(tail -n 5 "$LINKD_LOG" | tr '\n' ' ' | cut -c1-400)"
    return 1
  fi
  wait_for 5 test -S "$LINKD_SOCK"
  return 0
}
_health_or_dead() { _health_ok || ! linkd_alive; }
_health_ok() { curl -sf -m 1 -o /dev/null "$LINKD_URL/health"; }
# linkd_stop : SIGTERM the current linkd and check it exits 0 (a PASS/FAIL line)
linkd_stop() { _linkd_term "$LINKD_PID"; }
# _linkd_term PID : SIGTERM a linkd started by linkd_start, unless the test
# already stopped it; check its exit status is 0.
_linkd_term() {
  local pid=$1 n
  [ -n "$pid" ] || return 0
  if ! _is_live "$pid"; then wait "$pid" 2>/dev/null; return 0; fi
  n=$(basename "${LINKD_LOGS[$pid]:-linkd.?.log}" .log)
  kill -TERM "$pid" 2>/dev/null
  if wait_exit "$pid" 15; then
    if [ "$WAIT_RC" = 0 ]; then
      pass "$n exits 0 on SIGTERM (no state left)"
    else
      fail "$n exits 0 on SIGTERM (no state left)" "exit status $WAIT_RC; log: $(grep -iE 'error|left|leak|runtime|sanitizer' "${LINKD_LOGS[$pid]:-/dev/null}" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
    fi
  else
    fail "$n exits on SIGTERM" "still running after 15 s; killed"
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  fi
}
# _is_live PID : running and not a zombie
_is_live() { [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z ' "/proc/$1/stat" 2>/dev/null; }
linkd_alive() { kill -0 "$LINKD_PID" 2>/dev/null; }

# ---------- test service
# svc_start TAG [svc.py args...] : starts tests/svc.py on LINKD_SOCK, output in
# $T_TMP/svc.TAG.out; waits for READY (or REFUSED). Sets SVC_PID, SVC_OUT and
# SVC_PIDS[TAG], SVC_OUTS[TAG]. Returns 1 if it never registered.
declare -A SVC_PIDS SVC_OUTS
svc_start() {
  local tag=$1; shift
  SVC_OUT=$T_TMP/svc.$tag.out
  : >"$SVC_OUT"
  $PY -u "$TESTS/svc.py" --socket "$LINKD_SOCK" "$@" >"$SVC_OUT" 2>"$T_TMP/svc.$tag.err" &
  SVC_PID=$!
  track "$SVC_PID"
  SVC_PIDS[$tag]=$SVC_PID
  SVC_OUTS[$tag]=$SVC_OUT
  if ! wait_for 10 grep -qE '^(READY|REFUSED|LINK_CLOSED)' "$SVC_OUT"; then
    log "svc $tag did not register: $(tail -n 3 "$T_TMP/svc.$tag.err")"
    return 1
  fi
  grep -q '^READY' "$SVC_OUT"
}
# svc_grep TAG REGEX : does the service's output hold a matching line?
svc_grep() { grep -Eq -- "$2" "${SVC_OUTS[$1]}"; }
svc_count() { grep -Ec -- "$2" "${SVC_OUTS[$1]}"; }
# svc_holds_slow NAME: svc.py NAME holds, unanswered, a slow HTTP request
# (?sleep=) and a slow WebSocket one (do.later): a kill now finds both in flight
svc_holds_slow() {
  local k
  for k in HTTP LATER; do [ "$(svc_count "$1" "^$k-HELD ")" -gt "$(svc_count "$1" "^$k-ANSWERED ")" ] || return 1; done
}
svc_kill() { kill -"${2:-KILL}" "${SVC_PIDS[$1]}" 2>/dev/null; wait "${SVC_PIDS[$1]}" 2>/dev/null; return 0; }

# ---------- HTTP
# http METHOD PATH [curl args...] : sets HTTP_STATUS and HTTP_BODY (body in $T_TMP/body).
http() {
  local m=$1 p=$2; shift 2
  HTTP_STATUS=$(curl -s -m "${HTTP_MAXTIME:-10}" -X "$m" -o "$T_TMP/body" -w '%{http_code}' "$@" "$LINKD_URL$p")
  HTTP_BODY=$(cat "$T_TMP/body" 2>/dev/null)
}
# json EXPR : evaluates a Python expression over j = json of stdin; prints the result.
json() { $PY -c 'import json,sys; j=json.load(sys.stdin); r=eval(sys.argv[1]); print(r if isinstance(r,str) else json.dumps(r))' "$1"; }
# tcp [--timeout S] : sends stdin's bytes raw to linkd's port, prints everything
# read back until the peer closes (or the timeout).
tcp() { $PY "$TESTS/tcp.py" 127.0.0.1 "$LINKD_PORT" "$@"; }

# ---------- metrics
# metric NAME_WITH_LABELS : prints the value of the first matching sample of
# /metrics (exact series name, e.g. 'linkd_http_requests_total{status="200"}').
# Prints nothing if absent.
metric() {
  curl -s -m 5 "$LINKD_URL/metrics" | awk -v n="$1" '$1 == n { print $2; exit }'
}
# metric_in TEXT NAME : the same, from a /metrics text already fetched
metric_in() { awk -v n="$2" '$1 == n { print $2; exit }' <<<"$1"; }
# metric_is NAME VALUE : for wait_for
metric_is() { [ "$(metric "$1")" = "$2" ]; }
# svc_count_ge TAG REGEX N : at least N matching lines (for wait_for)
svc_count_ge() { [ "$(grep -Ec -- "$2" "${SVC_OUTS[$1]}")" -ge "$3" ]; }
