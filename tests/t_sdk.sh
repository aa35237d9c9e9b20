#!/usr/bin/env bash
# The TypeScript SDK (sdk/typescript) tested with node's test runner: framing
# and robustness against a scripted socket, then HTTP, WebSocket and frame
# limits against a real linkd started by each test file, and the chat example
# (examples/chat) as a client sees it, started before linkd and after. One PASS:/FAIL: line per node test.
. "$(dirname "$0")/lib.sh"
. "$TESTS/sdk/npm.sh"

node_ready || exit 0
npm_ready "$ROOT/sdk/typescript" "$ROOT/examples/chat" "$TESTS/sdk" || exit 0
ts_build "$ROOT/sdk/typescript" || exit 0
ts_build "$ROOT/examples/chat" || exit 0
linkd_built || exit 0

cd "$ROOT" || exit 0
timeout -k 5 240 node --test --test-reporter="$TESTS/sdk/reporter.mjs" \
  "$TESTS"/sdk/*.test.mjs >"$T_TMP/node.out" 2>"$T_TMP/node.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/node.out"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  fail "node tests finish" "timed out after 240 s"
elif ! grep -qE '^(PASS|FAIL):' "$T_TMP/node.out"; then
  fail "node tests run" "exit $rc: $(tail -n 5 "$T_TMP/node.err" "$T_TMP/node.out" | tr '\n' ' ' | cut -c1-300)"
fi
exit 0
