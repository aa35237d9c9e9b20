#!/usr/bin/env bash
# HTTP gateway basics: /health, forwarding of everything in a request, route
# precedence, params, keep-alive, pipelining order, load spreading, /metrics.
. "$(dirname "$0")/lib.sh"

linkd_start || exit 0

# /health
http GET /health
expect_eq "health status 200" "$HTTP_STATUS" 200
expect_eq "health body says healthy" "$(echo "$HTTP_BODY" | json 'j["status"]')" healthy
expect_match "health body has a version" "$(echo "$HTTP_BODY" | json 'j.get("version","")')" '.'

# No service yet: 404 with a JSON error body
http GET /users/42
expect_eq "no route: 404" "$HTTP_STATUS" 404
expect_eq "404 body error.type NOT_FOUND" "$(echo "$HTTP_BODY" | json 'j["error"]["type"]' 2>&1)" NOT_FOUND
expect_match "404 body has error.message" "$(echo "$HTTP_BODY" | json 'j["error"]["message"]' 2>&1)" '.'

svc_start users --name users --instance users-1 \
  --route 'GET /users/:id' --route 'GET /users/stats' --route 'POST /users/:id/posts/:pid' \
  --route 'GET /p/:n' --route '* /any' --route 'GET /' \
  || fail "service registers" "$(cat "$SVC_OUT")"
svc_start other --name other --instance other-1 --route 'GET /teams/:id' --route 'GET /teams/top' \
  || fail "second service registers" "$(cat "$SVC_OUT")"

# Forwarding: method, path, params, query, headers (Host included), body, remote address
http POST '/users/7/posts/99?a=1&b=two%20x' -H 'Host: gw.example.test' -H 'X-Test-One: alpha' \
  -H 'X-Test-Two: beta gamma' -H 'Content-Type: text/plain' --data-binary 'hello body'
expect_eq "forwarded route answers 200" "$HTTP_STATUS" 200
B=$HTTP_BODY
expect_eq "method forwarded" "$(echo "$B" | json 'j["method"]' 2>&1)" POST
expect_eq "path forwarded without query" "$(echo "$B" | json 'j["path"]' 2>&1)" /users/7/posts/99
expect_eq "params forwarded" "$(echo "$B" | json 'j["params"]' 2>&1)" '{"id": "7", "pid": "99"}'
expect_eq "raw query forwarded" "$(echo "$B" | json 'j["query"]' 2>&1)" 'a=1&b=two%20x'
expect_eq "Host header forwarded" "$(echo "$B" | json '[v for n,v in j["headers"] if n.lower()=="host"]' 2>&1)" '["gw.example.test"]'
expect_eq "custom headers forwarded" \
  "$(echo "$B" | json '[v for n,v in j["headers"] if n.lower().startswith("x-test-")]' 2>&1)" '["alpha", "beta gamma"]'
expect_eq "all headers forwarded (count)" \
  "$(echo "$B" | json 'sorted(n.lower() for n,v in j["headers"])' 2>&1)" \
  '["accept", "content-length", "content-type", "host", "user-agent", "x-test-one", "x-test-two"]'
expect_eq "body forwarded" "$(echo "$B" | json 'j["body"]' 2>&1)" 'hello body'
expect_match "remote address forwarded" "$(echo "$B" | json 'j["remote"]' 2>&1)" '^127\.0\.0\.1:[0-9]+$'
expect_eq "matched pattern forwarded" "$(echo "$B" | json 'j["route"]' 2>&1)" '/users/:id/posts/:pid'

# Response headers and status from the service reach the client
H=$(curl -s -m 10 -D - -o /dev/null "$LINKD_URL/users/5?status=201")
expect_match "service status passed through" "$H" '^HTTP/1\.1 201'
expect_match "service headers passed through" "$H" $'X-Instance: users-1\r'

# Static segment beats parameter, whatever the registration order
http GET /users/stats
expect_eq "static beats param (same service): route" "$(echo "$HTTP_BODY" | json 'j["route"]' 2>&1)" /users/stats
expect_eq "static beats param: no params" "$(echo "$HTTP_BODY" | json 'j["params"]' 2>&1)" '{}'
http GET /users/statsx
expect_eq "param still matches other values" "$(echo "$HTTP_BODY" | json 'j["params"]["id"]' 2>&1)" statsx
http GET /teams/top
expect_eq "static beats param (registered after)" "$(echo "$HTTP_BODY" | json 'j["route"]' 2>&1)" /teams/top
http GET /teams/12
expect_eq "second service gets its own routes" "$(echo "$HTTP_BODY" | json 'j["service"]+" "+j["params"]["id"]' 2>&1)" 'other 12'
http GET /users/7/extra
expect_eq "extra segment: 404" "$HTTP_STATUS" 404
http DELETE /users/7
expect_eq "method not registered: 404" "$HTTP_STATUS" 404
http PUT /any --data x
expect_eq "'*' method route takes PUT" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["method"]' 2>&1)" 200/PUT
http GET /
expect_eq "root route" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["path"]' 2>&1)" 200//

# Large response body through the link
http GET '/users/big?size=300000'
expect_eq "300 kB response body intact" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'len(j["pad"])' 2>&1)" 200/300000
# Large request body (under the 1m default)
head -c 500000 /dev/zero | tr '\0' 'a' >"$T_TMP/big"
http POST '/any' -H 'Expect:' --data-binary @"$T_TMP/big"
expect_eq "500 kB request body intact" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["body_len"]' 2>&1)" 200/500000

# Keep-alive: curl reuses one connection for two URLs
V=$(curl -sv -m 10 -o /dev/null -o /dev/null "$LINKD_URL/users/1" "$LINKD_URL/health" 2>&1)
expect_match "keep-alive: second request reuses the connection" "$V" '[Rr]e-using existing connection'
# HTTP/1.0 without keep-alive: answered, then closed
R=$(printf 'GET /users/3 HTTP/1.0\r\nHost: x\r\n\r\n' | tcp --timeout 5); rc=$?
expect_eq "HTTP/1.0 request answered and closed" "$rc/$(echo "$R" | head -n1 | tr -d '\r')" "0/HTTP/1.1 200 OK"
# Connection: close honoured
R=$(printf 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' | tcp --timeout 5); rc=$?
expect_eq "Connection: close honoured" "$rc" 0

# Pipelining: three requests in one write, the first one slow; answers in order
REQS='GET /p/1?sleep=400 HTTP/1.1\r\nHost: x\r\n\r\nPOST /any HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcdeGET /p/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'
R=$(printf "$REQS" | tcp --timeout 10); rc=$?
ORDER=$(printf '%s' "$R" | grep -o '"path":"[^"]*"' | tr '\n' ' ')
expect_eq "pipelined: three answers, in request order" "$rc|$ORDER" '0|"path":"/p/1" "path":"/any" "path":"/p/3" '
expect_eq "pipelined: three 200 status lines" "$(printf '%s' "$R" | grep -ao 'HTTP/1.1 200' | wc -l)" 3
# Pipelined with a request split across packets
R=$(printf 'GET /p/a HTTP/1.1\r\nHo--PAUSE--\nst: x\r\n\r\nGET /p/b HTTP/1.1\r\n--PAUSE--\nHost: x\r\nConnection: close\r\n\r\n' | tcp --chunks --timeout 10); rc=$?
ORDER=$(printf '%s' "$R" | grep -o '"path":"[^"]*"' | tr '\n' ' ')
expect_eq "requests split across packets" "$rc|$ORDER" '0|"path":"/p/a" "path":"/p/b" '
# Pipelined linkd endpoints mixed with forwarded ones
R=$(printf 'GET /p/x?sleep=200 HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' | tcp --timeout 10)
ORDER=$(printf '%s' "$R" | grep -aoE 'HTTP/1.1 [0-9]{3}|"path":"[^"]*"|"status":"healthy"|NOT_FOUND' | tr '\n' ' ')
expect_eq "pipelined: slow forward, /health, 404 in order" "$ORDER" 'HTTP/1.1 200 "path":"/p/x" HTTP/1.1 200 "status":"healthy" HTTP/1.1 404 NOT_FOUND '

# Two instances of one service both receive requests
svc_start users2 --name users --instance users-2 \
  --route 'GET /users/:id' --route 'GET /users/stats' --route 'POST /users/:id/posts/:pid' \
  --route 'GET /p/:n' --route '* /any' --route 'GET /' \
  || fail "second instance of a service registers" "$(cat "$SVC_OUT")"
: >"$T_TMP/inst"
for i in $(seq 1 20); do
  curl -s -m 5 "$LINKD_URL/users/$i" | json 'j["instance"]' >>"$T_TMP/inst" 2>/dev/null
done
expect_eq "two instances: all 20 answered" "$(wc -l <"$T_TMP/inst")" 20
expect_eq "two instances: both received requests" "$(sort -u "$T_TMP/inst" | tr '\n' ' ')" 'users-1 users-2 '
expect_match "two instances: each got at least 3 of 20" \
  "$(sort "$T_TMP/inst" | uniq -c | awk '{print $1}' | sort -n | head -n1)" '^([3-9]|1[0-9])$'

# /metrics
M=$(curl -s -m 5 -D "$T_TMP/mh" "$LINKD_URL/metrics")
expect_match "metrics content type is Prometheus text" "$(cat "$T_TMP/mh")" '[Cc]ontent-[Tt]ype: text/plain'
expect_eq "metrics: linkd_services counts 2 services (3 instances)" "$(metric linkd_services)" 2
M1=$(curl -s -m 5 "$LINKD_URL/metrics")
n200=$(metric_in "$M1" 'linkd_http_requests_total{status="200"}')
n404=$(metric_in "$M1" 'linkd_http_requests_total{status="404"}')
expect_match "metrics: 200 counter present" "$n200" '^[0-9]+$'
expect_match "metrics: 404 counter present" "$n404" '^[0-9]+$'
bin=$(metric_in "$M1" linkd_http_bytes_in_total); bout=$(metric_in "$M1" linkd_http_bytes_out_total)
expect_match "metrics: bytes in counter" "$bin" '^[0-9.e+]+$'
expect_match "metrics: bytes out counter" "$bout" '^[0-9.e+]+$'
for i in 1 2 3; do curl -s -m 5 -o /dev/null "$LINKD_URL/users/$i"; done
curl -s -m 5 -o /dev/null "$LINKD_URL/nothing/here"
M2=$(curl -s -m 5 "$LINKD_URL/metrics")
n200b=$(metric_in "$M2" 'linkd_http_requests_total{status="200"}')
n404b=$(metric_in "$M2" 'linkd_http_requests_total{status="404"}')
# the first /metrics scrape counts as a 200 (the second may be counted before it answers): 3 + 1 or 2
expect_match "metrics: 200 counter grows by the requests made" "$(( ${n200b:-0} - ${n200:-0} ))" '^[45]$'
expect_eq "metrics: 404 counter grows by one" "$(( ${n404b:-0} - ${n404:-0} ))" 1
bin2=$(metric_in "$M2" linkd_http_bytes_in_total); bout2=$(metric_in "$M2" linkd_http_bytes_out_total)
check "metrics: bytes counters grow" $PY -c "import sys; sys.exit(0 if float('${bin2:-0}')>float('${bin:-0}') and float('${bout2:-0}')>float('${bout:-0}') else 1)"
check "metrics: every sample line parses" $PY -c '
import sys,re
bad=[l for l in sys.stdin.read().splitlines() if l and not l.startswith("#") and not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEinfNa]+$", l)]
print(bad[:3]); sys.exit(1 if bad else 0)' <<<"$M"

check "linkd still running" linkd_alive
exit 0
