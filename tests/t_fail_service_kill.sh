#!/usr/bin/env bash
# Failure proof: the service is killed (SIGKILL) under load and started again.
# WebSocket clients (all in one room) and keep-alive HTTP clients send
# requests without pause throughout (tests/fail_load.py svckill): some sit in
# the service for a while (do.later / ?sleep=), so requests are in flight at
# the kill. Checked: every request is answered within a bound, with ok or
# SERVICE_UNAVAILABLE / 503 (never a hang, never another error); requests in
# flight at the kill get SERVICE_UNAVAILABLE / 503 at once; no WebSocket
# connection is lost; the new instance is told every connection with its room
# (EXISTING); after the re-registration every client succeeds again and a push
# to the room reaches every member.
. "$(dirname "$0")/lib.sh"

CLIENTS=$(( 12 / T_SLOW + 2 ))       # WebSocket clients (2 requests in flight each)
HTTPC=$(( 4 / T_SLOW + 1 ))          # HTTP keep-alive clients
BOUND=$(( 5 * T_SLOW ))              # seconds within which every request is settled
SVC_ARGS=(--name fk --ws /ws/fk --route 'GET /fk/:n')

linkd_start --rate-limit 0 --handler-timeout $((BOUND * 3))s --http-timeout $((BOUND * 3))s || exit 0
svc_start a "${SVC_ARGS[@]}" --instance fk-1 || { fail "service registers" "$(cat "$SVC_OUT")"; exit 0; }

LOAD=$T_TMP/load.out
$PY -u "$TESTS/fail_load.py" svckill --name "$T_NAME" --port "$LINKD_PORT" --ws /ws/fk --http-prefix /fk \
  --clients "$CLIENTS" --http-clients "$HTTPC" --bound "$BOUND" --later 300 --slow "$T_SLOW" \
  --svc-out "${SVC_OUTS[a]}" --max-time 150 >"$LOAD" 2>"$T_TMP/load.err" &
LOAD_PID=$!
track "$LOAD_PID"
loaded() { grep -q '^CONNECTED' "$LOAD" || ! kill -0 "$LOAD_PID"; }
wait_for 20 loaded
if ! grep -q '^CONNECTED' "$LOAD"; then
  fail "load starts" "$(grep -E '^(FAIL|SEEN)' "$LOAD" | head -3; tail -n 3 "$T_TMP/load.err")"
  exit 0
fi
# Kill while requests sit in the service: a "later" and a slow HTTP request
# have reached it (and traffic has run for a moment).
before=$(svc_count a '"type":"do.later"')
wait_for 10 svc_count_ge a '"type":"do.later"' $((before + CLIENTS * 2))
wait_for 10 svc_count_ge a '^HTTP ' $((HTTPC * 2))
svc_kill a KILL
t_kill=$(date +%s%N)

# While it is away: SERVICE_UNAVAILABLE and 503, nothing else.
check "while the service is down: SERVICE_UNAVAILABLE reaches clients" wait_for 10 grep -q '^SEEN ws-unavailable' "$LOAD"
check "while the service is down: HTTP 503" wait_for 10 grep -q '^SEEN http-503' "$LOAD"
check "linkd counts no service instance" wait_for 10 metric_is linkd_service_instances 0
expect_eq "every WebSocket connection kept while the service is down" "$(metric linkd_ws_connections)" "$CLIENTS"
expect_eq "memberships kept while the service is down" "$(metric linkd_memberships)" "$CLIENTS"

svc_start b "${SVC_ARGS[@]}" --instance fk-2 || fail "the service registers again" "$(cat "$SVC_OUT")"
log "service down for $(( ($(date +%s%N) - t_kill) / 1000000 )) ms"
kill -USR2 "$LOAD_PID"   # from now on every request must succeed
wait_for 10 svc_count_ge b '"type":"EXISTING"' "$CLIENTS"
expect_eq "the new instance is told every connection (EXISTING)" "$(svc_count b '"type":"EXISTING"')" "$CLIENTS"
expect_eq "... each with its room" "$(svc_count b '"type":"EXISTING".*"rooms":\["all"\]')" "$CLIENTS"
check "traffic flows again: every client succeeds after the re-registration" wait_for $((BOUND * 2)) grep -q '^FLOWING' "$LOAD"

kill -USR1 "$LOAD_PID"
if wait_exit "$LOAD_PID" $((BOUND * 3 + 10)); then
  grep -E '^(PASS|FAIL):' "$LOAD"
  grep -q '^PASS:.*push to the room reaches every member' "$LOAD" || fail "load checks ran" "$(tail -n 3 "$T_TMP/load.err")"
else
  fail "the load ends after the stop" "still running"
fi
expect_eq "linkd accepted $CLIENTS WebSocket connections in all (no client had to reconnect)" "$(metric linkd_ws_accepted_total)" "$CLIENTS"
check "linkd still running" linkd_alive
exit 0
