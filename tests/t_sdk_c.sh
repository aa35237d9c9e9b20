#!/usr/bin/env bash
# The C service library (sdk/c). First its unit tests against a scripted
# linkd (sdk/c/test/test_sdk.c: registration, HTTP, messages, roles, commands
# and results, timeouts, bad and oversize frames skipped, reconnect, stop),
# plain, under ASan+UBSan and under valgrind; the C++ check. Then the test
# service on the library (sdk/c/test/svc_c.c) against a real linkd, driven
# over HTTP and WebSocket (sdk/c/test/e2e.py), a service restart with clients
# staying, the declared frame limit (413 / 1009), connection recovery
# (RESUMED), and linkd restarting under a running service. The service runs with ASan when linkd does (SAN=1) and
# under valgrind when linkd does (VALGRIND=1); natively under ARCH=... .
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

if ! make -s sdk-c >"$T_TMP/build.log" 2>&1; then
  fail "sdk/c builds (make sdk-c)" "$(grep -E 'error|Error' "$T_TMP/build.log" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
  exit 0
fi
B=$ROOT/build/sdk_c

# ---------------------------------------------------------------- unit tests
unit() {   # unit TAG CMD... : runs the unit tests, echoes their lines with TAG
  local tag=$1; shift
  mkdir -p "$T_TMP/u-$tag"
  timeout -k 5 120 "$@" "$T_TMP/u-$tag" >"$T_TMP/unit-$tag.out" 2>"$T_TMP/unit-$tag.err"
  local rc=$?
  if [ "$tag" = plain ]; then
    grep -E '^(PASS|FAIL):' "$T_TMP/unit-$tag.out"
  else
    grep -E '^FAIL:' "$T_TMP/unit-$tag.out" | sed "s/^FAIL: t_sdk_c: unit:/FAIL: t_sdk_c: unit ($tag):/"
  fi
  local n; n=$(grep -c '^PASS:' "$T_TMP/unit-$tag.out")
  if [ "$rc" -eq 0 ] && [ "$n" -gt 40 ]; then
    [ "$tag" = plain ] || pass "unit tests under $tag: $n checks, exit 0"
  else
    fail "unit tests ($tag) exit 0" "exit $rc after $n checks: $(grep -E 'ERROR|SUMMARY|runtime error|definitely|Invalid|uninit' "$T_TMP/unit-$tag.err" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
  fi
}
unit plain "$B/test_sdk"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 unit asan "$B/test_sdk_asan"
if command -v valgrind >/dev/null; then
  unit valgrind valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "$B/test_sdk"
fi
o=$("$B/cxx_check" 2>&1); echo "$o" | grep -E '^(PASS|FAIL):' || fail "cxx_check runs" "$o"

# ---------------------------------------------------------------- against a real linkd
SVC=("$B/svc_c")
case "${LINKD_CMD:-}" in
  *linkd-asan*) SVC=("$B/svc_c_asan") ;;
  *valgrind*) SVC=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "$B/svc_c") ;;
esac
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# csvc_start TAG [svc_c args] : starts the test service, waits for REGISTERED; sets CSVC_PID, CSVC_OUT
csvc_start() {
  local tag=$1; shift
  CSVC_OUT=$T_TMP/csvc.$tag.out
  : >"$CSVC_OUT"
  "${SVC[@]}" --socket "$LINKD_SOCK" "$@" >"$CSVC_OUT" 2>"$CSVC_OUT.err" &
  CSVC_PID=$!
  track "$CSVC_PID"
  wait_for 15 grep -q '^REGISTERED' "$CSVC_OUT"
}
# csvc_stop PID OUT NAME : SIGTERM, expect exit 0 and the EXIT line
csvc_stop() {
  kill -TERM "$1" 2>/dev/null
  if wait_exit "$1" 20 && [ "$WAIT_RC" = 0 ] && grep -q '^EXIT 0 ' "$2"; then pass "$3"
  else fail "$3" "exit $WAIT_RC: $(tail -n 3 "$2.err" | tr '\n' ' ' | cut -c1-300)"; fi
}

SECRET=c-sdk-secret-$$
linkd_start --jwt-secret "$SECRET" || exit 0
if csvc_start main; then pass "the C test service registers with linkd"
else fail "the C test service registers with linkd" "$(tail -n 3 "$CSVC_OUT.err" | tr '\n' ' ' | cut -c1-300)"; exit 0; fi

T_SLOW=$T_SLOW timeout -k 5 180 $PY "$ROOT/sdk/c/test/e2e.py" "$LINKD_URL" "$SECRET" "$CSVC_OUT" "$CSVC_PID" -- \
  "${SVC[@]}" --socket "$LINKD_SOCK" >"$T_TMP/e2e.out" 2>"$T_TMP/e2e.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/e2e.out"
[ "$rc" -eq 0 ] || fail "e2e.py finishes" "exit $rc: $(tail -n 3 "$T_TMP/e2e.err" | tr '\n' ' ' | cut -c1-300)"
wait "$CSVC_PID" 2>/dev/null
case $(sed -n 's/^EXIT //p' "$CSVC_OUT") in 0\ *) ;; *) fail "first instance exit" "$(tail -n 3 "$CSVC_OUT.err" | tr '\n' ' ' | cut -c1-300)" ;; esac

# ---------------------------------------------------------------- the declared frame limit
if csvc_start small --name small --path /ws/small --prefix /s --max-frame 32768; then
  http POST /s/echo --data-binary "@/dev/stdin" -H 'Content-Type: text/plain' <<<"$(head -c 40000 /dev/zero | tr '\0' a)"
  expect_eq "max_frame_bytes 32768 declared: linkd answers 413 to a 40000-byte body" "$HTTP_STATUS" 413
  http POST /s/echo --data-binary 'small body' -H 'Content-Type: text/plain'
  expect_eq "max_frame_bytes 32768 declared: a small body goes through" "$HTTP_STATUS $HTTP_BODY" "200 small body"
  o=$($PY - "$LINKD_URL" <<'EOF' 2>&1
import sys, os
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS
w = WS(sys.argv[1].replace('http://', 'ws://') + '/ws/small')
r = w.call('echo', 'x' * 1000)
print('small', 'ok' if r and r.get('data') == 'x' * 1000 else r, end=' ')
w.send('echo', 'y' * 20000, 'big')
print('big', w.wait_close(5), end=' ')
EOF
)
  expect_match "max_frame_bytes 32768: a 1000-byte message goes through, a 20000-byte one (over 32 KiB less linkd's 16 KiB of frame room) closes 1009" "$o" 'small ok.*big \(1009,'
  csvc_stop "$CSVC_PID" "$CSVC_OUT" "the small instance exits 0 on SIGTERM"
else
  fail "a service declaring max_frame_bytes 32768 registers" "$(tail -n 3 "$CSVC_OUT.err" | tr '\n' ' ' | cut -c1-300)"
fi

# ---------------------------------------------------------------- connection recovery (RESUMED)
if csvc_start rec --name rec --path /ws/rec --prefix /r --recovery 30000; then
  o=$(T_SLOW=$T_SLOW timeout -k 5 60 $PY "$ROOT/sdk/c/test/recovery.py" "$LINKD_URL" "$CSVC_OUT" 2>&1 | tr '\n' ' ')
  expect_match "recovery: asked for at registration; a client drops, comes back with its token, gets the missed push" \
    "$o" "dropped=True missed=missed recovered=True"
  expect_match "recovery: on_resume gets RESUMED with the rooms given back and the dropped connection's id" \
    "$o" "resumed_rooms=r1 previous_is_dropped=True"
  csvc_stop "$CSVC_PID" "$CSVC_OUT" "the recovery instance exits 0 on SIGTERM"
else
  fail "a service asking for connection recovery registers" "$(tail -n 3 "$CSVC_OUT.err" | tr '\n' ' ' | cut -c1-300)"
fi

# ---------------------------------------------------------------- linkd restarts under the service
if csvc_start again; then
  linkd_stop
  if wait_for 10 grep -q '^DOWN' "$CSVC_OUT"; then pass "linkd stops: the service sees the link go down"
  else fail "linkd stops: the service sees the link go down" "no DOWN line"; fi
  sleep 0.3   # the service retries (backoff) while linkd is away: exercised, not awaited
  linkd_start --jwt-secret "$SECRET" || exit 0
  registered_twice() { [ "$(grep -c '^REGISTERED' "$CSVC_OUT")" -ge 2 ]; }
  if wait_for 15 registered_twice; then pass "linkd back: the service reconnects and registers again"
  else fail "linkd back: the service reconnects and registers again" "$(tail -n 3 "$CSVC_OUT" | tr '\n' ' ')"; fi
  http GET /c/hello/again
  expect_match "after linkd's restart the routes answer again" "$HTTP_STATUS $HTTP_BODY" '^200 .*"name":"again"'
  csvc_stop "$CSVC_PID" "$CSVC_OUT" "the service exits 0 on SIGTERM after a reconnect"
  expect_match "its counters: one reconnect, no frame skipped" "$(grep '^EXIT' "$CSVC_OUT")" 'skipped=0 reconnects=1'
fi
exit 0
