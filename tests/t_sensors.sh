#!/usr/bin/env bash
# The sensors example (examples/sensors): its self-test (parsers of /proc and
# /sys/class/thermal on fake files, the one-hour ring), one real sample of
# this machine, then the service against a real linkd: the page and its
# script served by the service, pushes to the room, the rate changed by an
# admin only (FORBIDDEN for the others), the history; then the dashboard in
# chromium with a screenshot in tests/out/sensors-dashboard.png. The service
# runs with ASan when linkd does (SAN=1), under valgrind when linkd does, and
# as its own cross build under qemu when linkd does (ARCH=aarch64|armhf).
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

if ! make -s sensors >"$T_TMP/build.log" 2>&1; then
  fail "examples/sensors builds (make sensors)" "$(grep -E 'error|Error' "$T_TMP/build.log" | head -n 3 | tr '\n' ' ' | cut -c1-300)"
  exit 0
fi
BIN=$ROOT/build/sensors/linkd-sensors
SENS=("$BIN")
case "${LINKD_CMD:-}" in
  *linkd-asan*) SENS=("$ROOT/build/sensors/linkd-sensors-asan") ;;
  *valgrind*) SENS=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "$BIN") ;;
  # make test ARCH=...: the service's own cross build (make cross made it) under the same emulator
  *qemu-aarch64-static*) [ -x "$ROOT/build/cross-aarch64/linkd-sensors" ] && SENS=(qemu-aarch64-static "$ROOT/build/cross-aarch64/linkd-sensors") ;;
  *qemu-arm-static*) [ -x "$ROOT/build/cross-armhf/linkd-sensors" ] && SENS=(qemu-arm-static "$ROOT/build/cross-armhf/linkd-sensors") ;;
esac
log "sensors service: ${SENS[*]}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# ---------------------------------------------------------------- without linkd
"${SENS[@]}" --self-test >"$T_TMP/self.out" 2>&1
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/self.out"
[ "$rc" -eq 0 ] || fail "self-test exits 0" "exit $rc: $(tail -n 3 "$T_TMP/self.out" | tr '\n' ' ')"

mkdir -p "$T_TMP/thermal/thermal_zone0"
echo cpu-thermal >"$T_TMP/thermal/thermal_zone0/type"
echo 51250 >"$T_TMP/thermal/thermal_zone0/temp"
o=$("${SENS[@]}" --sample --thermal "$T_TMP/thermal" 2>&1)
expect_match "--sample: a board's thermal zone (cpu-thermal, 51250) read as 51.3 °C" "$o" '"temp_c":51\.[23],'
o=$("${SENS[@]}" --sample --thermal "$T_TMP/no-such-dir" 2>&1)
total=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
expect_match "--sample on this machine: real memory total, load, counters; no thermal dir: temp_c null" "$o" \
  "^\{\"t\":[0-9]{13},\"temp_c\":null,\"cpu_pct\":[0-9.]+,\"load\":\[[0-9.]+,[0-9.]+,[0-9.]+\],\"mem\":\{\"total_kb\":$total,"

# ---------------------------------------------------------------- against linkd
SECRET=sensors-secret-$$
linkd_start --jwt-secret "$SECRET" || exit 0
"${SENS[@]}" --socket "$LINKD_SOCK" >"$T_TMP/sensors.out" 2>"$T_TMP/sensors.err" &
SPID=$!
track "$SPID"
if wait_for 15 grep -q 'registered with linkd' "$T_TMP/sensors.err"; then pass "the sensors service registers with linkd"
else fail "the sensors service registers with linkd" "$(tail -n 3 "$T_TMP/sensors.err" | tr '\n' ' ' | cut -c1-300)"; exit 0; fi

T_SLOW=$T_SLOW timeout -k 5 120 $PY "$ROOT/examples/sensors/test/check.py" "$LINKD_URL" "$SECRET" >"$T_TMP/check.out" 2>"$T_TMP/check.err"
rc=$?
grep -E '^(PASS|FAIL):' "$T_TMP/check.out"
[ "$rc" -eq 0 ] || fail "check.py finishes" "exit $rc: $(tail -n 3 "$T_TMP/check.err" | tr '\n' ' ' | cut -c1-300)"

# ---------------------------------------------------------------- the dashboard in chromium
. "$TESTS/sdk/npm.sh"
if [ ! -x /usr/bin/chromium ]; then
  fail "chromium installed" "/usr/bin/chromium not found (make deps installs Debian's chromium)"
elif node_ready && npm_ready "$TESTS/browser"; then
  ADMIN=$($PY - "$SECRET" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b'=').decode()
h = b(b'{"alg":"HS256","typ":"JWT"}')
p = b(json.dumps({'sub': 'ada', 'preferred_username': 'ada', 'roles': ['admin'], 'exp': int(time.time()) + 3600}).encode())
print(h + '.' + p + '.' + b(hmac.new(sys.argv[1].encode(), (h + '.' + p).encode(), hashlib.sha256).digest()))
EOF
)
  mkdir -p "$ROOT/tests/out"
  timeout -k 5 150 node "$ROOT/examples/sensors/test/dashboard.e2e.mjs" "$TESTS/browser/node_modules/playwright-core" \
    "$LINKD_URL" "$ROOT/tests/out" "$ADMIN" >"$T_TMP/browser.out" 2>"$T_TMP/browser.err"
  rc=$?
  grep -E '^(PASS|FAIL):' "$T_TMP/browser.out"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then fail "browser test finishes" "timed out after 150 s"
  elif ! grep -qE '^(PASS|FAIL):' "$T_TMP/browser.out"; then
    fail "browser test runs" "exit $rc: $(tail -n 5 "$T_TMP/browser.err" | tr '\n' ' ' | cut -c1-300)"
  fi
fi

# ---------------------------------------------------------------- stop
kill -TERM "$SPID"
if wait_exit "$SPID" 20 && [ "$WAIT_RC" = 0 ]; then pass "the sensors service exits 0 on SIGTERM (its own poll loop, linkd_process)"
else fail "the sensors service exits 0 on SIGTERM" "exit $WAIT_RC: $(tail -n 3 "$T_TMP/sensors.err" | tr '\n' ' ' | cut -c1-300)"; fi
exit 0
