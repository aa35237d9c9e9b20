#!/usr/bin/env bash
# Adversarial checks of the recent changes (tests/robust2_check.py does the work):
# JWT claim unescaping (NUL injection, truncation, surrogates), permessage-deflate
# edge cases, batched service frames (ordering, a service that never reads,
# SHUTDOWN at stop), the room/membership hash index under churn (gauges exact),
# broadcast to mixed deflate/plain members. Sanitizer reports in linkd's log fail.
#   LINKD_CMD=$PWD/linkd-asan ASAN_OPTIONS=abort_on_error=1 tests/t_robust2.sh
. "$(dirname "$0")/lib.sh"

SECRET=robust2-secret
# A sanitizer's quarantine or an emulator inflates RSS: the bound on a stuck service's backlog is looser there.
case "${LINKD_CMD:-}" in *asan*|*valgrind*|*qemu*) export R2_RSS_LIMIT_KB=$((512 * 1024)) ;; esac
CHK() { timeout -k 5 "${2:-120}" $PY "$TESTS/robust2_check.py" $1 2>>"$T_TMP/check.err" | sed "s/^\(PASS\|FAIL\): /\1: $T_NAME: /"; }
sanitizer() {
  if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$LINKD_LOG"; then
    fail "$1: no sanitizer report" "$(grep -m1 -A4 -E 'AddressSanitizer|runtime error:' "$LINKD_LOG" | tr '\n' ' ' | cut -c1-400)"
  else pass "$1: no sanitizer report"; fi
  if linkd_alive; then pass "$1: linkd alive"; else fail "$1: linkd alive" "exited"; fi
}

linkd_start --jwt-secret "$SECRET" --max-message-size 64k --http-timeout 700ms --log-level warn || exit 0
svc_start main --name r2 --ws /ws --compression --route "GET /echo" --route "GET /admin roles=admin" || { fail "service registers"; exit 0; }
svc_start raw --name r2raw --ws /raw --raw --compression || fail "raw service registers"
HOSTPORT=(127.0.0.1 "$LINKD_PORT")

# ---- 1. JWT claims
CHK "jwt $LINKD_URL $SECRET" 60
if svc_grep main '^DECODE_ERROR'; then fail "jwt: service never sees invalid UTF-8" "$(grep -m1 DECODE_ERROR "$SVC_OUT" | cut -c1-200)"
else pass "jwt: service never sees invalid UTF-8"; fi
sanitizer jwt

# ---- 1b. HTTP: request sequence in ids, 204/304/1xx
CHK "http ${HOSTPORT[*]}" 60
sanitizer http

# ---- 2. permessage-deflate
CHK "deflate ${HOSTPORT[*]} /ws /raw" 90
CHK "mixed ${HOSTPORT[*]} /ws" 60
sanitizer deflate

# ---- 3. batching order
CHK "order ${HOSTPORT[*]} /ws 3000" 60
sanitizer order

# ---- 4. index churn; gauges exact while connections hold rooms, and after
CHURN_IN=$T_TMP/churn.in; mkfifo "$CHURN_IN"
timeout -k 5 180 $PY "$TESTS/robust2_check.py" churn "${HOSTPORT[@]}" /ws 40 25 <"$CHURN_IN" >"$T_TMP/churn.out" 2>>"$T_TMP/check.err" &
CHURN_PID=$!; track $CHURN_PID
exec {TO}>"$CHURN_IN"
expect_lines() { [ "$(grep -c '^EXPECT' "$T_TMP/churn.out")" -ge "$1" ]; }
gauges_are() { [ "$(metric linkd_memberships)" = "$1" ] && [ "$(metric linkd_rooms)" = "$2" ]; }
for phase in 1 2; do
  if wait_for 150 expect_lines "$phase"; then
    read -r _ want_m want_r < <(grep '^EXPECT' "$T_TMP/churn.out" | sed -n "${phase}p")
    if wait_for 5 gauges_are "$want_m" "$want_r"; then pass "churn phase $phase: linkd_memberships=$want_m linkd_rooms=$want_r exact"
    else fail "churn phase $phase: gauges exact" "memberships $(metric linkd_memberships) (want $want_m), rooms $(metric linkd_rooms) (want $want_r)"; fi
  else fail "churn phase $phase: reached" "$(tail -n 3 "$T_TMP/churn.out" "$T_TMP/check.err" | tr '\n' ' ' | cut -c1-300)"; fi
  echo >&$TO
done
exec {TO}>&-
wait $CHURN_PID 2>/dev/null
sed "s/^\(PASS\|FAIL\): /\1: $T_NAME: /" "$T_TMP/churn.out" | grep -E '^(PASS|FAIL)'
if wait_for 10 gauges_are 0 0; then pass "churn: memberships and rooms back to 0"
else fail "churn: memberships and rooms back to 0" "memberships $(metric linkd_memberships), rooms $(metric linkd_rooms)"; fi
sanitizer churn

# ---- 5. a service that never reads
CHK "stall $LINKD_SOCK ${HOSTPORT[*]} /stall $LINKD_PID" 60
if wait_for 10 metric_is linkd_ws_connections 0; then pass "stall: WebSocket connections back to 0"
else fail "stall: WebSocket connections back to 0" "$(metric linkd_ws_connections)"; fi
check "stall: the main service still answers" curl -sf -m 3 -o /dev/null "$LINKD_URL/echo"
sanitizer stall

# ---- 6. SHUTDOWN notice reaches services at stop (an idle one and one whose link is backed up)
SD_IN=$T_TMP/sd.in; mkfifo "$SD_IN"
timeout -k 5 60 $PY "$TESTS/robust2_check.py" shutdown "$LINKD_SOCK" 0 </dev/null >"$T_TMP/sd0.out" 2>>"$T_TMP/check.err" & track $!
timeout -k 5 60 $PY "$TESTS/robust2_check.py" shutdown "$LINKD_SOCK" 1 <"$SD_IN" >"$T_TMP/sd1.out" 2>>"$T_TMP/check.err" & track $!
exec {SDW}>"$SD_IN"
wait_for 10 grep -q READY "$T_TMP/sd0.out"; wait_for 10 grep -q READY "$T_TMP/sd1.out"
# back the second link up: requests it never reads (each 503s after the handler timeout or stays pending)
head -c 60000 /dev/zero | tr '\0' x >"$T_TMP/pad"
for i in $(seq 1 60); do curl -s -m 2 -o /dev/null -X POST --data-binary @"$T_TMP/pad" "$LINKD_URL/sd1" & done
pending_at_least() { [ "$(metric linkd_pending_replies)" -ge "$1" ] 2>/dev/null; }
check "shutdown: the 60 requests are forwarded and owed by the stuck service" wait_for 10 pending_at_least 60
SAN_LOG=$LINKD_LOG
kill -TERM "$LINKD_PID"
# The backed-up service catches up while linkd stops: the notice must come
# after its backlog, not be lost with it. (A service that never reads again
# cannot be told anything: what linkd still holds for it goes at exit.)
echo >&$SDW; exec {SDW}>&-
if wait_exit "$LINKD_PID" 20; then
  expect_eq "shutdown: linkd exits 0" "$WAIT_RC" 0
else fail "shutdown: linkd exits" "still running"; kill -KILL "$LINKD_PID"; fi
wait_for 25 grep -qE 'GOT|NONE' "$T_TMP/sd0.out"
expect_eq "shutdown: an idle service gets the SHUTDOWN ErrorResponse" "$(grep -oE 'GOT|NONE' "$T_TMP/sd0.out")" GOT
wait_for 25 grep -qE 'GOT|NONE' "$T_TMP/sd1.out"
expect_eq "shutdown: a backed-up service gets the SHUTDOWN ErrorResponse" "$(grep -oE 'GOT|NONE' "$T_TMP/sd1.out")" GOT
wait
if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$SAN_LOG"; then
  fail "shutdown: no sanitizer report" "$(grep -m1 -A4 -E 'AddressSanitizer|LeakSanitizer|runtime error:' "$SAN_LOG" | tr '\n' ' ' | cut -c1-400)"
else pass "shutdown: no sanitizer report"; fi
if [ -s "$T_TMP/check.err" ] && grep -q Traceback "$T_TMP/check.err"; then
  log "python tracebacks: $(grep -A3 Traceback "$T_TMP/check.err" | head -20)"
fi
exit 0
