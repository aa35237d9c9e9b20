#!/usr/bin/env bash
# End-to-end: the admin console (--admin-listen, issue 14) in Debian's
# chromium driven by playwright-core (tests/browser/admin.e2e.mjs): linkd with
# a JWT secret, the test service on /ws/chat, WebSocket clients in a second
# page. The console asks for a token, refuses one without the admin role,
# then shows the figures and they move as clients come and send; a push to a
# room reaches its members, a disconnect closes a client with the code given;
# no console errors; 1280 and 400 px screenshots in the test's directory,
# copied to tests/out/ (git-ignored). Runs the native ./linkd whatever
# LINKD_CMD says (an emulator or valgrind would only slow the browser down).
. "$(dirname "$0")/lib.sh"
. "$TESTS/sdk/npm.sh"

if [ ! -x /usr/bin/chromium ]; then
  fail "chromium installed" "/usr/bin/chromium not found (make deps installs Debian's chromium)"
  exit 0
fi
node_ready || exit 0
npm_ready "$TESTS/browser" || exit 0
case "${LINKD_CMD:-}" in *qemu*|*valgrind*) log "native ./linkd for the browser test"; LINKD=("$ROOT/linkd"); T_SLOW=1 ;; esac
if [ ! -x "${LINKD[0]}" ]; then fail "linkd built" "${LINKD[0]} not found (run make)"; exit 0; fi

SECRET=admin-e2e-secret
APORT=$(free_port)
linkd_start --jwt-secret "$SECRET" --admin-listen "127.0.0.1:$APORT" || exit 0
svc_start chat --name chat --instance admin-e2e-1 --ws /ws/chat --route 'GET /chat/hello' \
  || { fail "service chat registers" "$(cat "$SVC_OUT")"; exit 0; }

( cd "$TESTS/browser" && timeout -k 5 150 node admin.e2e.mjs "$LINKD_URL" "http://127.0.0.1:$APORT" "$SECRET" "$T_TMP/shots" ) \
  >"$T_TMP/e2e.out" 2>"$T_TMP/e2e.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/e2e.out"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  fail "browser test finishes" "timed out after 150 s"
elif ! grep -qE '^(PASS|FAIL):' "$T_TMP/e2e.out"; then
  fail "browser test runs" "exit $rc: $(tail -n 5 "$T_TMP/e2e.err" | tr '\n' ' ' | cut -c1-300)"
fi
if ls "$T_TMP"/shots/admin-*.png >/dev/null 2>&1; then
  mkdir -p "$ROOT/tests/out" && cp "$T_TMP"/shots/admin-*.png "$ROOT/tests/out/"
  pass "screenshots saved ($(cd "$T_TMP/shots" && echo admin-*.png); copies in tests/out/)"
else
  fail "screenshots saved" "none in $T_TMP/shots"
fi
expect_match "the console's actions are in linkd's log" "$(cat "$LINKD_LOG")" \
  "admin \(user 'u-root' from 127\.0\.0\.1:[0-9]+\): disconnect [0-9.]+ with 4321 \(e2e says bye\)"
check "linkd alive after the browser test" linkd_alive
exit 0
