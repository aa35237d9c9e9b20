#!/usr/bin/env bash
# Failure proof: SIGTERM under load. A service (tests/fail_pusher.py) pushes
# numbered messages to every client and to a room of all of them, each with an
# op_id, and records linkd's CommandResults; the clients (tests/fail_load.py
# sigterm) send echo requests and slow HTTP requests meanwhile; two of them
# stop reading for 1.5 s just before the stop. linkd is stopped with SIGTERM.
# Checked (fail_load.py check-sigterm): every push acknowledged before the
# stop reached its client(s), in the order sent, before
# {"type":"server.shutdown"}, which is the last message, then close 1001;
# every reply the service wrote before an acknowledged push reached its
# client; HTTP requests the service had are answered 200; no push to a
# connection acknowledged ok after the stop began was dropped; linkd exits 0
# within its shutdown timeout.
. "$(dirname "$0")/lib.sh"

CLIENTS=$(( 16 / T_SLOW + 2 ))
HTTPC=2
BOUND=$(( 5 * T_SLOW ))
RATE=$(( 600 / T_SLOW ))              # pushes per second, all clients together

linkd_start --rate-limit 0 --shutdown-timeout 10s || exit 0
PUSHER=$T_TMP/pusher.out
$PY -u "$TESTS/fail_pusher.py" --socket "$LINKD_SOCK" --clients "$CLIENTS" --rate "$RATE" --window 64 \
  --route 'GET /push/:n' >"$PUSHER" 2>"$T_TMP/pusher.err" &
track $!
wait_for 10 grep -q '^READY' "$PUSHER" || { fail "the pusher registers" "$(tail -n 3 "$PUSHER" "$T_TMP/pusher.err")"; exit 0; }

LOAD=$T_TMP/load.out
REPORT=$T_TMP/report.json
$PY -u "$TESTS/fail_load.py" sigterm --name "$T_NAME" --port "$LINKD_PORT" --ws /ws/push --http-prefix /push \
  --clients "$CLIENTS" --http-clients "$HTTPC" --bound "$BOUND" --later 400 --pause 0.02 \
  --slow-clients 2 --slow-for 1.5 --report "$REPORT" --max-time 120 >"$LOAD" 2>"$T_TMP/load.err" &
LOAD_PID=$!
track "$LOAD_PID"
loaded() { grep -q '^TRAFFIC' "$LOAD" || ! kill -0 "$LOAD_PID"; }
wait_for 30 loaded
if ! grep -q '^TRAFFIC' "$LOAD"; then
  fail "load starts (pushes and replies reach every client)" "$(grep -E '^(FAIL|SEEN)' "$LOAD" | head -3; tail -n 3 "$T_TMP/load.err")"
  exit 0
fi
# Under way: pushes acknowledged, slow HTTP requests sitting in the service.
count_ge() { [ "$(grep -c -- "$2" "$1")" -ge "$3" ]; }
acks=$(grep -c '^ACK' "$PUSHER")
wait_for 10 count_ge "$PUSHER" '^ACK' $((acks + RATE / 2))
wait_for 10 count_ge "$PUSHER" '^HTTP ' $((HTTPC * 2))
# Two clients stop reading for a while (their pushes, and then linkd's close
# frame, wait in the socket): the stop must not lose what was acknowledged to
# them, and what linkd acknowledges while their close is pending must reach them.
kill -USR2 "$LOAD_PID"
wait_for 5 grep -q '^PAUSED' "$LOAD"
t_stop=$($PY -c 'import time; print(repr(time.monotonic()))')
kill -TERM "$LINKD_PID"
if wait_exit "$LINKD_PID" $((15 * T_SLOW)); then
  expect_eq "linkd exits 0 after SIGTERM under load" "$WAIT_RC" 0
else
  fail "linkd exits after SIGTERM under load" "still running after $((15 * T_SLOW)) s"
  kill -KILL "$LINKD_PID"
fi
t_end=$($PY -c 'import time; print(repr(time.monotonic()))')
log "stop took $($PY -c "print('%.2f s' % ($t_end - $t_stop))")"
check "the load sees every connection closed and reports" wait_for $((BOUND * 2)) grep -q '^REPORTED' "$LOAD"
grep -E '^(PASS|FAIL):' "$LOAD"
check "the pusher was told SHUTDOWN before its link closed" grep -q '^ERROR.*SHUTDOWN' "$PUSHER"
$PY "$TESTS/fail_load.py" check-sigterm --name "$T_NAME" --report "$REPORT" --pusher-out "$PUSHER" \
  --t-stop "$t_stop" --min-acked $((RATE / 2))
check "linkd logged a clean stop" grep -q 'stopped' "${LINKD_LOGS[$LINKD_PID]}"
exit 0
