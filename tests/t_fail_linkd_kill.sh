#!/usr/bin/env bash
# Failure proof: linkd killed (SIGKILL) under load and started again on the
# same port and socket path (twice). A service on the TypeScript SDK and the test
# service (svc.py --reconnect) are connected; WebSocket clients on both paths
# and HTTP clients on both routes send requests without pause
# (tests/fail_load.py linkdkill). Checked: requests in flight at the kill fail
# with the dropped connection at once (nothing hangs); the new linkd replaces
# the stale socket file; both services reconnect and register again by
# themselves (their log lines and linkd's); every client reconnects and
# succeeds again.
. "$(dirname "$0")/lib.sh"
. "$TESTS/sdk/npm.sh"

CLIENTS=$(( 6 / T_SLOW + 2 ))        # WebSocket clients per path
HTTPC=2                              # HTTP clients per route
BOUND=$(( 5 * T_SLOW ))

SDK=1
{ node_ready && npm_ready "$ROOT/sdk/typescript" && ts_build "$ROOT/sdk/typescript"; } || SDK=0

linkd_start --rate-limit 0 || exit 0
svc_start py --name pyfail --ws /ws/pyfail --route 'GET /pyfail/:n' --reconnect \
  || { fail "the test service registers" "$(cat "$SVC_OUT")"; exit 0; }
WS_ARGS=(--ws /ws/pyfail --http /pyfail)
if [ "$SDK" = 1 ]; then
  node "$TESTS/fail_sdk_svc.js" "$LINKD_SOCK" >"$T_TMP/sdk.out" 2>"$T_TMP/sdk.err" &
  track $!
  if wait_for 20 grep -q '^REGISTERED' "$T_TMP/sdk.out"; then
    WS_ARGS+=(--ws /ws/sdkfail --http /sdkfail)
  else
    fail "the SDK service registers" "$(tail -n 3 "$T_TMP/sdk.out" "$T_TMP/sdk.err" | tr '\n' ' ')"
    SDK=0
  fi
fi

LOAD=$T_TMP/load.out
$PY -u "$TESTS/fail_load.py" linkdkill --name "$T_NAME" --port "$LINKD_PORT" "${WS_ARGS[@]}" \
  --clients "$CLIENTS" --http-clients "$HTTPC" --bound "$BOUND" --pause 0.02 --retry 0.05 \
  --slow-ws /ws/pyfail --slow-http /pyfail --later 300 \
  --max-time 150 >"$LOAD" 2>"$T_TMP/load.err" &
LOAD_PID=$!
track "$LOAD_PID"
loaded() { grep -q '^CONNECTED' "$LOAD" || ! kill -0 "$LOAD_PID"; }
wait_for 20 loaded
if ! grep -q '^CONNECTED' "$LOAD"; then
  fail "load starts" "$(grep -E '^(FAIL|SEEN)' "$LOAD" | head -3; tail -n 3 "$T_TMP/load.err")"
  exit 0
fi
count_ge() { [ "$(grep -c -- "$2" "$1")" -ge "$3" ]; }
inode() { stat -c '%i/%z' "$LINKD_SOCK" 2>/dev/null; }   # inode numbers get reused: with the ctime
KILLS=2
for k in $(seq "$KILLS"); do
  # traffic under way on every path, slow requests sitting in the service
  n=$(svc_count py '"type":"do.later"')
  wait_for 10 svc_count_ge py '"type":"do.later"' $((n + CLIENTS * 2))
  n=$(svc_count py '^HTTP ')
  wait_for 10 svc_count_ge py '^HTTP ' $((n + HTTPC * 2))
  old_inode=$(inode)
  OLD_PID=$LINKD_PID
  kill -HUP "$LOAD_PID"
  wait_for 5 count_ge "$LOAD" '^DOWN' "$k"
  # the kill comes while the service holds a slow WebSocket and a slow HTTP
  # request (under qemu the moment above can pass before the kill)
  wait_for 10 svc_holds_slow py
  kill -KILL "$OLD_PID"
  wait_exit "$OLD_PID" 5
  check "kill $k: requests in flight fail at once with their connection" wait_for 5 count_ge "$LOAD" '^SEEN lost' "$k"
  check "kill $k: the killed linkd left its socket file behind" test -S "$LINKD_SOCK"
  check "kill $k: the test service sees the link drop" wait_for 5 svc_count_ge py '^RECONNECTING' "$k"

  # the same port and socket path (linkd_start reuses LINKD_PORT / LINKD_SOCK)
  linkd_start --rate-limit 0 || exit 0
  kill -USR2 "$LOAD_PID"     # from now on every client must succeed again
  check "kill $k: the new linkd replaces the stale socket file (log line)" grep -q 'replacing stale' "$LINKD_LOG"
  new_inode=$(inode)
  check "kill $k: the socket file is a new one (inode/ctime $old_inode -> $new_inode)" \
    test -n "$new_inode" -a "$new_inode" != "$old_inode"
  check "kill $k: the test service registers again by itself" wait_for $((BOUND * 2)) svc_count_ge py '^READY' $((k + 1))
  check "kill $k: linkd logs the test service's registration" wait_for 5 grep -q "service 'pyfail' .* registered" "$LINKD_LOG"
  if [ "$SDK" = 1 ]; then
    check "kill $k: the SDK service reconnects and registers again by itself" \
      wait_for $((BOUND * 3)) count_ge "$T_TMP/sdk.out" '^REGISTERED' $((k + 1))
    check "kill $k: the SDK logs its re-registration" count_ge "$T_TMP/sdk.err" 'registered with linkd' $((k + 1))
    check "kill $k: linkd logs the SDK service's registration" wait_for 5 grep -q "service 'sdkfail' .* registered" "$LINKD_LOG"
  fi
  check "kill $k: every client reconnects and succeeds again (both paths, both routes)" \
    wait_for $((BOUND * 3)) count_ge "$LOAD" '^FLOWING' "$k"
  http GET /pyfail/1
  expect_eq "kill $k: the test service's route answers again" "$HTTP_STATUS" 200
  if [ "$SDK" = 1 ]; then
    http GET /sdkfail/1
    expect_eq "kill $k: the SDK service's route answers again" "$HTTP_STATUS" 200
  fi
done

kill -USR1 "$LOAD_PID"
if wait_exit "$LOAD_PID" $((BOUND * 2 + 10)); then
  grep -E '^(PASS|FAIL):' "$LOAD"
  grep -E '^# ' "$LOAD" >&2
else
  fail "the load ends after the stop" "still running"
fi
check "linkd still running" linkd_alive
exit 0
