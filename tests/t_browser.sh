#!/usr/bin/env bash
# End-to-end: linkd + the chat example (examples/chat) + Debian's chromium
# driven by playwright-core. Two pages join one room, chat, see typing and
# history after a reload; then no failed request (favicon) on load, long
# words wrap, a 400 px screen has no horizontal scroll, same-name users get
# different tags; a third page, through a proxy the test cuts, loses its
# network for a few seconds while another keeps sending, shows "reconnecting…"
# and then every message in order, once each (linkd must have
# recovered the connection rather than the page reloading
# the history). Screenshots go to tests/out/ (git-ignored).
. "$(dirname "$0")/lib.sh"
. "$TESTS/sdk/npm.sh"

if [ ! -x /usr/bin/chromium ]; then
  fail "chromium installed" "/usr/bin/chromium not found (make deps installs Debian's chromium)"
  exit 0
fi
node_ready || exit 0
npm_ready "$ROOT/sdk/typescript" "$ROOT/examples/chat" "$TESTS/browser" || exit 0
ts_build "$ROOT/sdk/typescript" || exit 0
# the page's linkd-client.js is built from sdk/client/src by the chat's build
if [ -d "$ROOT/examples/chat/dist" ] && { [ ! -f "$ROOT/examples/chat/dist/linkd-client.js" ] ||
   [ "$ROOT/sdk/client/src/index.ts" -nt "$ROOT/examples/chat/dist/linkd-client.js" ]; }; then
  rm -rf "$ROOT/examples/chat/dist"
fi
ts_build "$ROOT/examples/chat" || exit 0
linkd_built || exit 0

linkd_start || exit 0
LINKD_SOCKET=$LINKD_SOCK CHAT_DB=$T_TMP/chat.db LINKD_SDK_LOG=warn \
  node "$ROOT/examples/chat/dist/main.js" >"$T_TMP/chat.log" 2>&1 &
track $!
_chat_ready() { curl -sf -m 1 "$LINKD_URL/chat/ready" | grep -q '"ready":true'; }
if ! wait_for 20 _chat_ready; then
  fail "chat service registers with linkd" "$(tail -n 5 "$T_TMP/chat.log" | tr '\n' ' ' | cut -c1-300)"
  exit 0
fi
pass "chat service registers with linkd (GET /chat/ready through linkd)"

http GET /chat/health
expect_match "chat HTTP route /chat/health through linkd" "$HTTP_STATUS $HTTP_BODY" '^200 .*"status":"healthy"'

mkdir -p "$ROOT/tests/out"
( cd "$TESTS/browser" && timeout -k 5 200 node chat.e2e.mjs "$LINKD_URL" "$ROOT/tests/out" ) >"$T_TMP/e2e.out" 2>"$T_TMP/e2e.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/e2e.out"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  fail "browser test finishes" "timed out after 200 s"
elif ! grep -qE '^(PASS|FAIL):' "$T_TMP/e2e.out"; then
  fail "browser test runs" "exit $rc: $(tail -n 5 "$T_TMP/e2e.err" | tr '\n' ' ' | cut -c1-300)"
fi

http GET /chat/rooms
expect_match "chat HTTP route /chat/rooms lists the test room's messages" "$HTTP_BODY" '"room":"e2e-[a-z0-9]+","messages":3'
exit 0
