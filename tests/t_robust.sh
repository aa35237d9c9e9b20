#!/usr/bin/env bash
# Robustness: hostile input on the HTTP port and the service socket must never
# crash or hang linkd. Each group (tests/robust_fuzz.py, seeded) throws one
# family of input; after it, linkd must be alive, answer /health, keep the
# well-behaved service working, and its gauges must come back to rest
# (no WebSocket connections, memberships or pending replies left behind).
# A group that kills or hangs linkd is reported and linkd is restarted, so the
# later groups still run. Sanitizer reports in linkd's log are failures too.
#   ROBUST_SEED=7 tests/t_robust.sh        # another seed
#   LINKD_CMD=$PWD/linkd-asan ASAN_OPTIONS=abort_on_error=1 tests/t_robust.sh
. "$(dirname "$0")/lib.sh"

SEED=${ROBUST_SEED:-1}
FLAGS=(--max-message-size 16k --max-body-size 64k --handler-timeout 400ms --max-outbound 256k
       --heartbeat-interval 30s --log-level warn)
GROUPS_RUN=(http_random http_split http_lengths http_backpressure ws_frames ws_envelope ws_vanish ws_stall svc_garbage svc_mutate svc_flood)
[ -n "${ROBUST_GROUPS:-}" ] && read -r -a GROUPS_RUN <<<"$ROBUST_GROUPS"

SVC_N=0
svc_up() {   # (re)starts the well-behaved test service; its output in svc.mainN.*
  SVC_N=$((SVC_N+1)); SVC_TAG=main$SVC_N
  svc_start "$SVC_TAG" --name robust --ws /ws --route "GET /echo" --route "POST /echo"
}
boot() {
  linkd_start "${FLAGS[@]}" || return 1
  if ! svc_up; then
    fail "test service registers" "$(tail -n 3 "$T_TMP/svc.$SVC_TAG.err" | tr '\n' ' ')"
    return 1
  fi
}

restart() {
  kill -KILL "$LINKD_PID" 2>/dev/null
  wait "$LINKD_PID" 2>/dev/null
  svc_kill "$SVC_TAG"
  boot
}

# The service's own HTTP route still works (its link survived the group).
svc_ok() { [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$LINKD_URL/echo")" = 200 ]; }
le_one() { local v; v=$(metric "$1"); [ -n "$v" ] && [ "$v" -le 1 ]; }

sanitizer_seen=0
after() {
  local g=$1
  if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$LINKD_LOG" && [ $sanitizer_seen = 0 ]; then
    sanitizer_seen=1
    fail "$g: no sanitizer report" "$(grep -m1 -A4 -E 'AddressSanitizer|runtime error:' "$LINKD_LOG" | tr '\n' ' ' | cut -c1-400)"
  fi
  if ! linkd_alive; then
    fail "$g: linkd survives" "linkd exited: $(grep -v '^linkd \(info\|warn\|debug\)' "$LINKD_LOG" | grep -m3 -E 'ERROR|SUMMARY|Segmentation|Abort|error' | tr '\n' ' ' | cut -c1-300)"
    restart || return 1
    sanitizer_seen=0
    return 0
  fi
  if ! wait_for 3 _health_ok; then
    fail "$g: linkd answers /health" "no answer within 3 s (hung: $(ps -o pcpu= -p "$LINKD_PID" | tr -d ' ')% CPU)"
    restart || return 1
    sanitizer_seen=0
    return 0
  fi
  pass "$g: linkd alive and answers /health"
  local name
  for name in linkd_ws_connections linkd_memberships linkd_rooms linkd_pending_replies; do
    if wait_for 5 metric_is "$name" 0; then pass "$g: $name back to 0"
    else fail "$g: $name back to 0" "it is $(metric "$name")"; fi
  done
  if wait_for 5 le_one linkd_http_connections; then pass "$g: linkd_http_connections back to at most 1"
  else fail "$g: linkd_http_connections back to at most 1" "it is $(metric linkd_http_connections)"; fi
  if wait_for 5 metric_is linkd_service_instances 1; then pass "$g: only the test service's link remains"
  else fail "$g: only the test service's link remains" "linkd_service_instances is $(metric linkd_service_instances)"; fi
  if svc_ok; then pass "$g: the test service still answers through linkd"
  else
    fail "$g: the test service still answers through linkd" "GET /echo: $(curl -s -m 2 -w ' %{http_code}' "$LINKD_URL/echo" | cut -c1-120); service: $(tail -n 1 "$T_TMP/svc.$SVC_TAG.err" | cut -c1-160)"
    svc_kill "$SVC_TAG"
    svc_up || true
  fi
}

boot || exit 0
for g in "${GROUPS_RUN[@]}"; do
  log "group $g"
  timeout -k 2 45 $PY -u "$TESTS/robust_fuzz.py" "$g" --port "$LINKD_PORT" --socket "$LINKD_SOCK" \
      --seed "$SEED" --pid "$LINKD_PID" >"$T_TMP/group.$g" 2>"$T_TMP/group.$g.err"
  rc=$?
  cat "$T_TMP/group.$g"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then fail "$g: group finished within 45 s" "timed out"
  elif [ $rc -ne 0 ]; then fail "$g: group ran" "exit $rc: $(tail -n 3 "$T_TMP/group.$g.err" | tr '\n' ' ' | cut -c1-300)"
  fi
  after "$g" || break
done
linkd_stop
if [ "$WAIT_RC" = 0 ]; then pass "linkd exits 0 on SIGTERM after all groups"
else fail "linkd exits 0 on SIGTERM after all groups" "exit status $WAIT_RC"; fi
exit 0
