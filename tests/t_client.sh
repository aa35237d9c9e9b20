#!/usr/bin/env bash
# The client library (sdk/client, npm package linkd-client) tested with node's
# test runner: its side of the protocol against a scripted WebSocket (replies,
# queue, backoff, the recovery exchange), then against a real linkd and a
# linkd-sdk service (request/reply, error types, server and local timeouts,
# RATE_LIMITED, reconnect after linkd restarts and after the service closes the
# connection, a changing token, the queue bound, states, close). One PASS:/FAIL:
# line per node test, including tests/client/recovery.test.mjs (recovery
# through linkd).
. "$(dirname "$0")/lib.sh"
. "$TESTS/sdk/npm.sh"

node_ready || exit 0
npm_ready "$ROOT/sdk/typescript" "$ROOT/sdk/client" "$TESTS/client" || exit 0
ts_build "$ROOT/sdk/typescript" || exit 0
ts_build "$ROOT/sdk/client" || exit 0
linkd_built || exit 0

files=("$TESTS"/client/protocol.test.mjs "$TESTS"/client/live.test.mjs "$TESTS"/client/reconnect.test.mjs "$TESTS"/client/recovery.test.mjs)

cd "$ROOT" || exit 0
timeout -k 5 240 node --test --test-reporter="$TESTS/client/reporter.mjs" \
  "${files[@]}" >"$T_TMP/node.out" 2>"$T_TMP/node.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/node.out"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  fail "node tests finish" "timed out after 240 s"
elif ! grep -qE '^(PASS|FAIL):' "$T_TMP/node.out"; then
  fail "node tests run" "exit $rc: $(tail -n 5 "$T_TMP/node.err" "$T_TMP/node.out" | tr '\n' ' ' | cut -c1-300)"
fi
exit 0
