#!/usr/bin/env bash
# HTTP error paths: 504 timeout, 431 header block, 413 body, 400 malformed,
# 503 for a service that is gone or dies mid-request, error bodies.
. "$(dirname "$0")/lib.sh"

linkd_start --http-timeout 1s --max-header-size 4k --max-body-size 1k || exit 0
svc_start a --name alpha --instance alpha-1 --route 'GET /p/:n' --route 'POST /up' --route 'GET /slow' \
  || fail "service alpha registers" "$(cat "$SVC_OUT")"
svc_start b --name beta --instance beta-1 --route 'GET /b/:n' \
  || fail "service beta registers" "$(cat "$SVC_OUT")"

# error body: {"error":{"type":..,"message":..}}
err_ok() { echo "$1" | $PY -c 'import json,sys; e=json.load(sys.stdin)["error"]; assert isinstance(e["type"],str) and e["type"] and isinstance(e["message"],str)'; }

# 504: no answer within --http-timeout
t0=$(date +%s%N)
http GET '/slow?noreply=1'
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
expect_eq "no answer: 504" "$HTTP_STATUS" 504
check "504 has a JSON error body" err_ok "$HTTP_BODY"
expect_match "504 after the 1 s timeout, not long after (${ms} ms)" "$ms" '^(9[0-9][0-9]|[1-2][0-9][0-9][0-9])$'

# A late answer after a 504 is dropped; the connection keeps working in order
R=$(printf 'GET /p/1?sleep=1500 HTTP/1.1\r\nHost: x\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' | tcp --timeout 8)
ST=$(printf '%s' "$R" | grep -aoE 'HTTP/1.1 [0-9]{3}' | tr '\n' ' ')
expect_eq "late answer after 504 dropped, next request answered" "$ST" 'HTTP/1.1 504 HTTP/1.1 200 '
expect_match "the 200 that follows is the second request's" "$R" '"path":"/p/2"'
check "late answer to a timed-out request does not crash linkd" linkd_alive
http GET /b/1
expect_eq "other service unaffected by the timeout" "$HTTP_STATUS" 200

# 431: header block over --max-header-size (4k)
BIG=$(head -c 5000 /dev/zero | tr '\0' 'h')
http GET /p/1 -H "X-Big: $BIG"
expect_eq "header block over limit: 431" "$HTTP_STATUS" 431
check "431 has a JSON error body" err_ok "$HTTP_BODY"
R=$(printf 'GET /p/1 HTTP/1.1\r\nHost: x\r\n' ; for i in $(seq 1 200); do printf 'X-H%03d: 0123456789012345678901234\r\n' "$i"; done; printf '\r\n')
R=$(printf '%s' "$R" | tcp --timeout 5)
expect_match "many headers over limit: 431" "$R" '^HTTP/1.1 431'
LONG=$(head -c 6000 /dev/zero | tr '\0' 'u')
http GET "/p/$LONG"
expect_match "request line over limit: 431 (or 414)" "$HTTP_STATUS" '^(431|414)$'
http GET /p/1 -H "X-Fit: $(head -c 3000 /dev/zero | tr '\0' 'f')"
expect_eq "header block under limit: 200" "$HTTP_STATUS" 200

# 413: body over --max-body-size (1k)
http POST /up -H 'Expect:' --data-binary "$(head -c 2000 /dev/zero | tr '\0' 'b')"
expect_eq "body over limit (Content-Length): 413" "$HTTP_STATUS" 413
check "413 has a JSON error body" err_ok "$HTTP_BODY"
http POST /up -H 'Expect:' -H 'Transfer-Encoding: chunked' --data-binary "$(head -c 3000 /dev/zero | tr '\0' 'c')"
expect_eq "body over limit (chunked): 413" "$HTTP_STATUS" 413
http POST /up -H 'Expect:' --data-binary "$(head -c 1024 /dev/zero | tr '\0' 'k')"
expect_eq "body exactly at the limit: 200" "$HTTP_STATUS" 200
R=$(printf 'POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n' | tcp --timeout 5)
expect_match "huge Content-Length refused before the body: 413" "$R" '^HTTP/1.1 413'
R=$(printf 'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n' | tcp --timeout 2)
expect_match "chunked body under the limit forwarded de-chunked" "$R" '"body":"hello world"'

# 400: malformed requests are answered 400 and the connection closed
R=$(printf 'THIS IS NOT HTTP\r\n\r\n' | tcp --timeout 5); rc=$?
expect_match "garbage request line: 400" "$R" '^HTTP/1.1 400'
expect_eq "garbage request line: connection closed" "$rc" 0
check "400 has a JSON error body" err_ok "$(printf '%s' "$R" | sed -n '/^\r$/,$p' | tail -n +2)"
R=$(printf 'GET /p/1 HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n' | tcp --timeout 5); rc=$?
expect_eq "malformed header line: 400 and closed" "$rc|$(printf '%s' "$R" | head -n1 | tr -d '\r')" '0|HTTP/1.1 400 Bad Request'
R=$(printf 'POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n' | tcp --timeout 5); rc=$?
expect_eq "invalid Content-Length: 400 and closed" "$rc|$(printf '%s' "$R" | head -n1 | tr -d '\r')" '0|HTTP/1.1 400 Bad Request'
R=$(printf 'GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n' | tcp --timeout 5); rc=$?
expect_eq "good request then garbage: 200 then 400, closed" \
  "$rc|$(printf '%s' "$R" | grep -aoE 'HTTP/1.1 [0-9]{3}' | tr '\n' ' ')" '0|HTTP/1.1 200 HTTP/1.1 400 '
check "linkd alive after malformed input" linkd_alive

# 503 at once when the service dies with requests pending
(curl -s -m 10 -o "$T_TMP/pend.body" -w '%{http_code}' "$LINKD_URL/p/9?noreply=1" >"$T_TMP/pend.code") &
CURL=$!
wait_for 5 svc_grep a '"path": "/p/9"' || fail "pending request reached the service" "$(cat "${SVC_OUTS[a]}")"
t0=$(date +%s%N)
svc_kill a KILL
wait "$CURL"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
expect_eq "service killed mid-request: 503" "$(cat "$T_TMP/pend.code")" 503
expect_match "503 comes at once (${ms} ms, timeout is 1000)" "$ms" '^[0-9]{1,3}$'
check "503 has a JSON error body" err_ok "$(cat "$T_TMP/pend.body")"
http GET /b/2
expect_eq "gateway still serves the other service" "$HTTP_STATUS" 200
http GET /health
expect_eq "gateway still answers /health" "$HTTP_STATUS" 200

# Service gone (its routes known, no instance left): 503, not 404
http GET /p/3
expect_eq "route of a gone service: 503" "$HTTP_STATUS" 503
check "503 (gone) has a JSON error body" err_ok "$HTTP_BODY"

# The service comes back: its routes work again
svc_start a2 --name alpha --instance alpha-2 --route 'GET /p/:n' --route 'POST /up' --route 'GET /slow' \
  || fail "service alpha registers again" "$(cat "$SVC_OUT")"
http GET /p/4
expect_eq "service back: its route answers 200" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["instance"]' 2>&1)" 200/alpha-2

# Service exits by itself with several requests pending (pipelined on one connection and on others)
CURLS=()
for i in 1 2 3; do
  (curl -s -m 10 -o /dev/null -w '%{http_code}' "$LINKD_URL/p/q$i?noreply=1" >"$T_TMP/pend$i") &
  CURLS+=($!)
done
wait_for 5 svc_count_ge a2 "^HTTP " 4 || fail "three pending requests reached the service" "$(cat "${SVC_OUTS[a2]}")"
curl -s -m 5 -o /dev/null "$LINKD_URL/p/x?exit=1"
wait "${CURLS[@]}"
expect_eq "three pending requests all get 503 when the service exits" "$(cat "$T_TMP"/pend1 "$T_TMP"/pend2 "$T_TMP"/pend3)" 503503503

# One of two instances dies mid-request: the pending request gets 503, the other instance keeps serving
svc_start c1 --name gamma --instance gamma-1 --route 'GET /g/:n' || fail "gamma-1 registers"
svc_start c2 --name gamma --instance gamma-2 --route 'GET /g/:n' || fail "gamma-2 registers"
(curl -s -m 10 -o /dev/null -w '%{http_code}' "$LINKD_URL/g/1?noreply=1" >"$T_TMP/g1") &
G1=$!
(curl -s -m 10 -o /dev/null -w '%{http_code}' "$LINKD_URL/g/2?noreply=1" >"$T_TMP/g2") &
G2=$!
wait_for 5 svc_grep c1 '^HTTP' || fail "gamma-1 got a request"
svc_kill c1 KILL
: >"$T_TMP/ginst"
for i in 1 2 3 4 5 6; do curl -s -m 5 "$LINKD_URL/g/$i" | json 'j["instance"]' >>"$T_TMP/ginst" 2>/dev/null; done
expect_eq "after one instance dies every request goes to the other" "$(sort -u "$T_TMP/ginst" | tr '\n' ' ')" 'gamma-2 '
svc_kill c2 KILL
wait "$G1" "$G2"
expect_eq "pending requests on both dead instances: 503" "$(cat "$T_TMP/g1" "$T_TMP/g2")" 503503

n=$(metric 'linkd_http_requests_total{status="503"}')
expect_match "metrics count 503s" "$n" '^([6-9]|[1-9][0-9]+)$'
check "linkd still running" linkd_alive
exit 0
