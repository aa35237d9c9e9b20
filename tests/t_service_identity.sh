#!/usr/bin/env bash
# Which processes may register a service (issue 15, README "Which processes
# may register"): linkd reads the peer's SO_PEERCRED on the service socket and
# names uid, gid and pid in every registration log line (and refusal). With
# `service_allow = <name or prefix*> <uid:N|gid:N|user:NAME|group:NAME>[,...]`
# lines in the config file only the listed users/groups may register a name:
# others get RegisterResult ok=false "uid U gid G may not register 'NAME'
# (service_allow)", counted in /metrics. A reload applies a new list and closes
# instances it no longer allows. Services under another uid run through
# `setpriv` (root only; otherwise those checks are skipped with a PASS line).
. "$(dirname "$0")/lib.sh"

# The socket lives where uid 65534 can reach it, and so do svc.py and its
# generated protobuf module (copies: the test does not depend on the
# permissions of the working tree).
chmod 711 "$T_TMP"
PUB=$T_TMP/pub
mkdir -p "$PUB/tests" "$PUB/build"
cp "$TESTS/svc.py" "$PUB/tests/svc.py"
cp "$ROOT/build/linkd_pb2.py" "$PUB/build/linkd_pb2.py"
chmod 755 "$PUB" "$PUB/tests" "$PUB/build"
chmod 644 "$PUB/tests/svc.py" "$PUB/build/linkd_pb2.py"
NOBODY=65534
if [ "$(id -u)" = 0 ] && setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups true 2>/dev/null; then OTHER=1; else OTHER=0; fi
skip_other() { pass "$1: skipped — not root, setpriv cannot run a service under another uid"; }

# svc_as TAG UID GID [svc.py args...] : svc_start for a service run by setpriv
# under UID/GID (no supplementary groups). Sets SVC_PID, SVC_OUT.
svc_as() {
  local tag=$1 uid=$2 gid=$3; shift 3
  SVC_OUT=$T_TMP/svc.$tag.out
  : >"$SVC_OUT"
  setpriv --reuid="$uid" --regid="$gid" --clear-groups $PY -u "$PUB/tests/svc.py" --socket "$LINKD_SOCK" "$@" \
    >"$SVC_OUT" 2>"$T_TMP/svc.$tag.err" &
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
# svc_result TAG : READY or "REFUSED <reason>" (first such line), or what there is
svc_result() { grep -m1 -E '^(READY|REFUSED|LINK_CLOSED)' "${SVC_OUTS[$1]}" | sed -E 's/^READY .*/READY/'; }
# reg NAME-REGEX UID GID PID : the log's registration line for it
reg_line() { grep -E "service '$1' [^ ]+ instance '[^']*' registered \([0-9]+ routes, websocket [^;]*; uid $2 gid $3 pid $4\)$" "$LINKD_LOG"; }
refused_line() { grep -E "service '$1' \(uid $2 gid $3 pid $4\) refused: $5" "$LINKD_LOG"; }
reload_counts() {
  local m; m=$(curl -s -m 5 "$LINKD_URL/metrics")
  echo "$(metric_in "$m" linkd_reloads_total) $(metric_in "$m" linkd_reloads_failed_total)"
}
_reload_sum_ge() { local a f; read -r a f <<<"$(reload_counts)"; [ -n "$a" ] && [ -n "$f" ] && [ $((a + f)) -ge "$1" ]; }
# hup_check NAME : SIGHUP and wait until linkd has handled it (applied or refused)
hup_check() {
  local a f; read -r a f <<<"$(reload_counts)"
  kill -HUP "$LINKD_PID" 2>/dev/null
  if [ -n "$a" ] && [ -n "$f" ] && wait_for 10 _reload_sum_ge $((a + f + 1)); then pass "$1"
  else fail "$1" "the reload was not handled: linkd $(_is_live "$LINKD_PID" && echo "running, counters '$a $f'" || echo exited)"; fi
}
conf_write() { cat >"$1.tmp" && mv -f "$1.tmp" "$1"; }
refused_metrics() {
  local m; m=$(curl -s -m 5 "$LINKD_URL/metrics")
  echo "$(metric_in "$m" linkd_service_registrations_refused_total)/$(metric_in "$m" linkd_service_registrations_refused_identity_total)"
}

# ---------------------------------------------------------------- 1. no service_allow
LINKD_SOCK=$PUB/linkd.sock
if linkd_start --socket-mode 0666; then
  svc_start a --name alpha --instance alpha-1 --route 'GET /a' || fail "alpha registers" "$(cat "$SVC_OUT")"
  check "no service_allow: the registration line names uid 0 gid 0 and svc.py's pid ($SVC_PID)" reg_line alpha 0 0 "$SVC_PID"
  if [ "$OTHER" = 1 ]; then
    svc_as free $NOBODY $NOBODY --name free --instance free-1 --route 'GET /free'
    expect_eq "no service_allow: a service under uid $NOBODY registers" "$(svc_result free)" READY
    check "... its line names uid $NOBODY gid $NOBODY and its pid ($SVC_PID)" reg_line free $NOBODY $NOBODY "$SVC_PID"
    http GET /free
    expect_eq "... and serves its route" "$HTTP_STATUS" 200
  else
    skip_other "no service_allow: a service under uid $NOBODY registers"
  fi
  svc_start bad --name 'bad name!' --instance bad-1
  expect_match "a refusal for another reason (bad name) is not an identity refusal" "$(svc_result bad)" '^REFUSED service name'
  check "... its log line names uid 0 gid 0 and the pid" refused_line 'bad name!' 0 0 "$SVC_PID" 'service name'
  expect_eq "... linkd_service_registrations_refused_total 1, ..._refused_identity_total 0" "$(refused_metrics)" "1/0"
  svc_kill a TERM; [ "$OTHER" = 1 ] && svc_kill free TERM
  linkd_stop
fi

# The allow-list of section 3 (root may register most of these names).
ALLOW='# t_service_identity
service_allow = alpha uid:0
service_allow = beta uid:4242
service_allow = team-* uid:0
service_allow = gamma gid:0
service_allow = delta user:root
service_allow = eps group:root
service_allow = multi uid:4242, gid:0
service_allow = nobg group:nogroup
service_allow = nob uid:0
'

# ---------------------------------------------------------------- 2. bad lines at start
n=0
for bad in 'service_allow = alpha' 'service_allow = alpha uid:abc' 'service_allow = alpha user:no-such-user-zz' \
           'service_allow = alpha group:no-such-group-zz' 'service_allow = al*pha uid:0' 'service_allow = alpha host:1' \
           'service_allow = alpha uid:-1' "service_allow = $(head -c 64 /dev/zero | tr '\0' a) uid:0"; do
  n=$((n+1))
  printf '# line 1\nservice_allow = alpha uid:0\n\n%s\n' "$bad" >"$T_TMP/bad$n.conf"
  out=$(timeout 20 "${LINKD[@]}" --config "$T_TMP/bad$n.conf" --check-config 2>&1); rc=$?
  if [ "$rc" = 2 ] && grep -q "bad$n\.conf:4" <<<"$out" && grep -q 'service_allow' <<<"$out"; then
    pass "--check-config, '$(cut -c1-50 <<<"$bad")': exit 2 naming file:line"
  else
    fail "--check-config, '$(cut -c1-50 <<<"$bad")': exit 2 naming file:line" "exit $rc: $(head -c 300 <<<"$out")"
  fi
done
printf '%s' "$ALLOW" >"$T_TMP/good.conf"
out=$(timeout 20 "${LINKD[@]}" --config "$T_TMP/good.conf" --check-config 2>&1); rc=$?
expect_eq "--check-config with the good list: exit 0" "$rc" 0
PORT=$(free_port)
timeout 20 "${LINKD[@]}" --listen "127.0.0.1:$PORT" --socket "$T_TMP/bad.sock" --config "$T_TMP/bad1.conf" >"$T_TMP/bad.out" 2>&1; rc=$?
expect_eq "starting with a bad service_allow line: exit 2, no socket" "$rc/$([ -e "$T_TMP/bad.sock" ] && echo socket || echo none)" "2/none"
out=$(timeout 20 "${LINKD[@]}" --service-allow 'alpha uid:0' --check-config 2>&1); rc=$?
expect_eq "service_allow is a config file line only: --service-allow is an unknown flag (exit 2)" "$rc" 2

# ---------------------------------------------------------------- 3. an allow-list
CONF=$T_TMP/allow.conf
printf '%s' "$ALLOW" | conf_write "$CONF"
unset LINKD_PORT
rm -f "$LINKD_SOCK"
linkd_start --socket-mode 0666 --config "$CONF" || exit 0

svc_start a --name alpha --instance alpha-1 --route 'GET /a'
expect_eq "alpha uid:0 — root registers alpha" "$(svc_result a)" READY
check "... the line names uid 0 gid 0 pid $SVC_PID" reg_line alpha 0 0 "$SVC_PID"
http GET /a
expect_eq "... and serves its route" "$HTTP_STATUS" 200

svc_start b --name beta --instance beta-1 --route 'GET /b'
expect_eq "beta uid:4242 — root is refused, with the reason" "$(svc_result b)" "REFUSED uid 0 gid 0 may not register 'beta' (service_allow)"
check "... the log names uid, gid and pid ($SVC_PID) and the reason" refused_line beta 0 0 "$SVC_PID" "uid 0 gid 0 may not register 'beta' \(service_allow\)"
expect_eq "... counted: linkd_service_registrations_refused_total 1, ..._refused_identity_total 1" "$(refused_metrics)" "1/1"
http GET /b
expect_eq "... its route does not exist" "$HTTP_STATUS" 404

svc_start z --name zeta --instance zeta-1
expect_eq "a name no line lists (zeta): refused" "$(svc_result z)" "REFUSED uid 0 gid 0 may not register 'zeta' (service_allow)"

for n in team-web team-api; do
  svc_start "$n" --name "$n" --instance "$n-1" --route "GET /$n" --ws "/ws/$n"
  expect_eq "team-* uid:0 — root registers $n" "$(svc_result "$n")" READY
done
for n in team teamx xteam-web; do
  svc_start "$n" --name "$n" --instance "$n-1"
  expect_match "team-* does not cover '$n'" "$(svc_result "$n")" "^REFUSED uid 0 gid 0 may not register '$n'"
done

svc_start g --name gamma --instance gamma-1
expect_eq "gamma gid:0 — root (gid 0) registers gamma" "$(svc_result g)" READY
svc_start d --name delta --instance delta-1
expect_eq "delta user:root (by name) — root registers delta" "$(svc_result d)" READY
svc_start e --name eps --instance eps-1
expect_eq "eps group:root (by name) — root registers eps" "$(svc_result e)" READY
svc_start m --name multi --instance multi-1
expect_eq "multi uid:4242, gid:0 — the second entry of a list matches" "$(svc_result m)" READY
svc_start ng --name nobg --instance nobg-root
expect_eq "nobg group:nogroup — root (gid 0) refused" "$(svc_result ng)" "REFUSED uid 0 gid 0 may not register 'nobg' (service_allow)"
expect_eq "refusals so far counted as identity refusals (6)" "$(refused_metrics)" "6/6"

if [ "$OTHER" = 1 ]; then
  svc_as gn $NOBODY 0 --name gamma --instance gamma-nobody
  expect_eq "gamma gid:0 — uid $NOBODY with primary gid 0 registers gamma (by its gid)" "$(svc_result gn)" READY
  check "... its line names uid $NOBODY gid 0 pid $SVC_PID" reg_line gamma $NOBODY 0 "$SVC_PID"
  svc_as gx $NOBODY $NOBODY --name gamma --instance gamma-x
  expect_eq "gamma gid:0 — uid/gid $NOBODY refused" "$(svc_result gx)" "REFUSED uid $NOBODY gid $NOBODY may not register 'gamma' (service_allow)"
  svc_as dn $NOBODY $NOBODY --name delta --instance delta-nobody
  expect_eq "delta user:root — nobody refused" "$(svc_result dn)" "REFUSED uid $NOBODY gid $NOBODY may not register 'delta' (service_allow)"
  svc_as ngn $NOBODY $NOBODY --name nobg --instance nobg-nobody
  expect_eq "nobg group:nogroup (by name) — a process of group nogroup registers" "$(svc_result ngn)" READY
  svc_as nob $NOBODY $NOBODY --name nob --instance nob-1 --route 'GET /nob'
  expect_eq "nob uid:0 — a service under uid $NOBODY refused" "$(svc_result nob)" "REFUSED uid $NOBODY gid $NOBODY may not register 'nob' (service_allow)"
  check "... the log names uid $NOBODY gid $NOBODY and its pid ($SVC_PID)" refused_line nob $NOBODY $NOBODY "$SVC_PID" "uid $NOBODY gid $NOBODY may not register 'nob'"
  printf '%s' "$ALLOW" | { cat; echo 'service_allow = nob user:nobody'; } | conf_write "$CONF"
  hup_check "service_allow = nob user:nobody added: SIGHUP handled"
  svc_as nob2 $NOBODY $NOBODY --name nob --instance nob-2 --route 'GET /nob'
  expect_eq "... now the service under uid $NOBODY registers nob" "$(svc_result nob2)" READY
  check "... its line names uid $NOBODY gid $NOBODY pid $SVC_PID" reg_line nob $NOBODY $NOBODY "$SVC_PID"
  http GET /nob
  expect_eq "... and serves its route" "$HTTP_STATUS" 200
else
  for what in "gid match for another uid" "user:root refuses nobody" "group:nogroup admits nobody" \
              "a service under another uid refused" "accepted once service_allow = nob user:nobody is added"; do
    skip_other "$what"
  done
fi

# ---- a reload that drops lines closes the instances they allowed
# A WebSocket client of team-web, open across that reload (it waits for $T_TMP/go).
$PY -u - "$LINKD_PORT" "$T_TMP/go" >"$T_TMP/wsc.out" 2>&1 <<'EOF' &
import os, sys, time
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS
w = WS('ws://127.0.0.1:%s/ws/team-web' % sys.argv[1])
print('BEFORE', (w.call('echo', {'x': 1}) or {}).get('data'), flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
r = w.call('echo', {'x': 2})
print('AFTER', (r or {}).get('error', {}).get('type'), 'closed' if w.closed else 'open', flush=True)
w.close()
EOF
WSC=$!
track $WSC
wait_for 10 grep -q '^BEFORE' "$T_TMP/wsc.out" || true
expect_eq "a WebSocket client of team-web is answered" "$(grep '^BEFORE' "$T_TMP/wsc.out")" "BEFORE {'x': 1}"
before=$(metric linkd_service_instances)
printf '%s' "$ALLOW" | grep -v 'team-\*' | conf_write "$CONF"   # team-* gone, and nob user:nobody too
hup_check "service_allow without team-* (and without nob user:nobody): SIGHUP handled"
closed_want=$(( OTHER ? 3 : 2 ))
if wait_for 10 svc_grep team-web '^LINK_CLOSED' && wait_for 10 svc_grep team-api '^LINK_CLOSED'; then
  pass "... the team-web and team-api instances are closed"
else
  fail "... the team-web and team-api instances are closed" "team-web: $(tail -n 1 "${SVC_OUTS[team-web]}"), team-api: $(tail -n 1 "${SVC_OUTS[team-api]}")"
fi
if [ "$OTHER" = 1 ]; then
  if wait_for 10 svc_grep nob2 '^LINK_CLOSED'; then pass "... the nob instance of uid $NOBODY is closed"
  else fail "... the nob instance of uid $NOBODY is closed" "$(tail -n 1 "${SVC_OUTS[nob2]}")"; fi
fi
expect_eq "... the log says why for each ($closed_want)" "$(grep -c 'no longer allowed by service_allow' "$LINKD_LOG")" "$closed_want"
expect_eq "... linkd_service_instances $before -> $(( ${before:-0} - closed_want ))" "$(metric linkd_service_instances)" "$(( ${before:-0} - closed_want ))"
check "... alpha is untouched (no LINK_CLOSED)" bash -c "! grep -q '^LINK_CLOSED' '${SVC_OUTS[a]}'"
http GET /a
expect_eq "... and still serves its route" "$HTTP_STATUS" 200
http GET /team-web
expect_eq "... team-web's route has no instance (503)" "$HTTP_STATUS" 503
touch "$T_TMP/go"
wait_for 10 grep -q '^AFTER' "$T_TMP/wsc.out" || true
expect_eq "... team-web's WebSocket client stays connected and gets SERVICE_UNAVAILABLE" "$(grep '^AFTER' "$T_TMP/wsc.out")" "AFTER SERVICE_UNAVAILABLE open"
svc_start tw2 --name team-web --instance team-web-2 --route 'GET /team-web'
expect_eq "... team-web registering again: refused" "$(svc_result tw2)" "REFUSED uid 0 gid 0 may not register 'team-web' (service_allow)"

# ---- a bad service_allow line in a reload: refused, the list stays as it was
printf '%s' "$ALLOW" | grep -v 'team-\*' | { cat; echo 'service_allow = team-* uid:0'; echo 'service_allow = alpha'; } | conf_write "$CONF"
bad_line=$(grep -n '^service_allow = alpha$' "$CONF" | cut -d: -f1)
read -r a0 f0 <<<"$(reload_counts)"
hup_check "a reload with a bad service_allow line (line $bad_line: no who): SIGHUP handled"
read -r a1 f1 <<<"$(reload_counts)"
expect_eq "... refused (linkd_reloads_failed_total ${f0:-?} -> ${f1:-?})" "$(( ${f1:-0} - ${f0:-0} ))/$(( ${a1:-0} - ${a0:-0} ))" "1/0"
expect_match "... the log says why, with file:line" "$(grep 'reload refused' "$LINKD_LOG" | tail -n 1)" \
  "reload refused, nothing changed: .*allow\.conf:$bad_line: service_allow"
svc_start tw3 --name team-web --instance team-web-3
expect_eq "... the team-* line of that file is not applied (team-web still refused)" "$(svc_result tw3)" \
  "REFUSED uid 0 gid 0 may not register 'team-web' (service_allow)"
svc_start a2 --name alpha --instance alpha-2
expect_eq "... alpha still allowed (a second instance registers)" "$(svc_result a2)" READY

# ---- no service_allow line left: anyone may register again
echo '# no service_allow lines' | conf_write "$CONF"
hup_check "every service_allow line removed: SIGHUP handled"
svc_start b2 --name beta --instance beta-2 --route 'GET /b'
expect_eq "... root registers beta (refused before)" "$(svc_result b2)" READY
check "... the registration still names uid/gid/pid" reg_line beta 0 0 "$SVC_PID"
check "linkd still running" _is_live "$LINKD_PID"
for t in "${!SVC_PIDS[@]}"; do svc_kill "$t" TERM; done
linkd_stop

exit 0
