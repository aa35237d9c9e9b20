#!/usr/bin/env bash
# TLS (issue 9), one linkd with both listeners: https:// with curl (routes,
# /health, 413, 431, auth, keep-alive, both listeners at once), wss:// with
# Python clients (envelopes, rooms shared with ws:// clients, deflate),
# records that arrive together, corrupted, truncated or garbage records,
# close_notify, plain HTTP sent to the TLS port, handshakes that stall (run
# alongside everything else: linkd must drop them at its 10 s deadline while
# serving the rest), session resumption, protocol versions and ciphers.
# The PKI is made here (tests/tls_lib.sh). Client certificates:
# t_tls_client.sh; --check-config and reload: t_tls_config.sh.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls_lib.sh"

tls_make_pki "$PKI" || exit 0
tls_start --max-body-size 1k --jwt-secret tls-test-secret || exit 0
svc_start t --name tsvc --instance t-1 --ws /ws/t --compression \
  --route "GET /t/items/:id" --route "POST /t/items" --route "GET /t/whoami" --route "GET /t/secret auth" ||
  fail "test service registers" "$(cat "$SVC_OUT")"
export TLS_PORT LINKD_PORT PKI T_SLOW

# ---- handshakes that stall: started first, checked last; everything in between
# runs while they are held open
$PY "$TESTS/tls_check.py" t_tls stall-none >"$T_TMP/stall.none" 2>&1 & track $!
$PY "$TESTS/tls_check.py" t_tls stall-half >"$T_TMP/stall.half" 2>&1 & track $!
STALL_PIDS=("${T_PIDS[@]: -2}")
tls_conns_ge() { [ "$(metric linkd_tls_connections)" -ge "$1" ]; }
wait_for 5 tls_conns_ge 2
expect_eq "two stalled handshakes are open (linkd_tls_connections)" "$(metric linkd_tls_connections)" 2

# ---- https with curl
out=$(curl -sv -m 10 --cacert "$PKI/ca.crt" "$TLS_URL/health" 2>&1)
expect_match "GET /health over https: 200 healthy" "$out" '"status":"healthy"'
expect_match "TLS 1.2 with ECDHE and an AEAD cipher" "$out" 'SSL connection using TLSv1.2 / ECDHE-ECDSA-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)'
expect_match "ALPN: http/1.1 accepted" "$out" 'ALPN: server accepted http/1.1'
out=$(curl -s -m 10 --cacert "$PKI/ca.crt" "https://localhost:$TLS_PORT/health")
expect_match "the certificate verifies by name too (https://localhost)" "$out" healthy

https GET '/t/items/42?x=1'
expect_eq "a route through the service over https: 200" "$HTTP_STATUS" 200
expect_eq "... with its params, query, Host and client address" \
  "$(echo "$HTTP_BODY" | json '[j["params"]["id"], j["query"], [v for k, v in j["headers"] if k.lower()=="host"][0], j["remote"].startswith("127.0.0.1")]' 2>&1)" \
  "[\"42\", \"x=1\", \"127.0.0.1:$TLS_PORT\", true]"
https POST /t/items -H 'Content-Type: application/json' --data-binary '{"name":"tls"}'
expect_eq "POST with a body over https" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["body"]' 2>&1)" '200/{"name":"tls"}'
https GET '/t/items/7?size=300000'
expect_eq "a 300 KB answer over https arrives whole (many records)" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'len(j["pad"])' 2>&1)" 200/300000
head -c 2000 /dev/zero | tr '\0' a >"$T_TMP/big"
https POST /t/items --data-binary @"$T_TMP/big"
expect_eq "body over --max-body-size over https: 413" "$HTTP_STATUS" 413
https GET /t/items/1 -H "X-Big: $(head -c 20000 /dev/zero | tr '\0' b)"
expect_eq "header block over --max-header-size over https: 431" "$HTTP_STATUS" 431
https GET /t/nothing
expect_eq "no route over https: 404 with the JSON error" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["error"]["type"]' 2>&1)" 404/NOT_FOUND
https GET /t/secret
expect_eq "a route with auth over https, no token: 401" "$HTTP_STATUS" 401

h0=$(metric linkd_tls_handshakes_total)
out=$(curl -s -m 10 --cacert "$PKI/ca.crt" -o /dev/null -o /dev/null -o /dev/null -o /dev/null -w '%{http_code}:%{num_connects} ' \
  "$TLS_URL/health" "$TLS_URL/t/items/1" "$TLS_URL/t/items/2" "$TLS_URL/metrics")
expect_eq "keep-alive: four requests on one TLS connection (status:new connections)" "$out" "200:1 200:0 200:0 200:0 "
expect_eq "... one handshake for them" "$(( $(metric linkd_tls_handshakes_total) - h0 ))" 1

# both listeners at once: 2 x 20 requests in parallel
both=()
for u in "$LINKD_URL" "$TLS_URL"; do
  ( for i in $(seq 20); do echo "url = \"$u/t/items/$i\""; echo "output = /dev/null"; done | \
    curl -s -m 20 --cacert "$PKI/ca.crt" -K - -w '%{http_code}\n' >"$T_TMP/both.${u%%:*}" ) &
  both+=($!)
done
wait "${both[@]}"
expect_eq "both listeners at once: 40 requests (20 http + 20 https in parallel), all 200" \
  "$(sort "$T_TMP"/both.* | uniq -c | tr -s ' ')" " 40 200"

# ---- plain HTTP sent to the TLS port: a plain 400, then the connection closes
out=$(curl -s -m 5 -w ' %{http_code}' "http://127.0.0.1:$TLS_PORT/health" 2>&1); rc=$?
expect_match "plain HTTP to the TLS port: 400 saying it speaks TLS" "$out" 'this port speaks TLS.* 400$'
expect_eq "... a well-formed answer (curl exit 0: Content-Length matches the body)" "$rc" 0
out=$(printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' | $PY "$TESTS/tcp.py" 127.0.0.1 "$TLS_PORT" --timeout $((5 * T_SLOW)) 2>&1); rc=$?
expect_eq "... and linkd closes the connection (no hang)" "$rc/$(echo "$out" | head -n 1 | tr -d '\r')" "0/HTTP/1.1 400 Bad Request"

# ---- WebSocket over TLS, records, close_notify (Python)
$PY "$TESTS/tls_check.py" t_tls wss
$PY "$TESTS/tls_check.py" t_tls records

# ---- resumption, versions, ciphers (openssl s_client)
r0=$(metric linkd_tls_resumed_total)
out=$(s_client -reconnect)
expect_match "session resumption: openssl s_client -reconnect is Reused" "$out" '^Reused, TLSv1.2'
r1=$(metric linkd_tls_resumed_total)
expect_eq "... linkd_tls_resumed_total grew by the 5 reconnects" "$((r1 - r0))" 5
f0=$(metric linkd_tls_failures_total)
refused() { grep -q 'Cipher is (NONE)' <<<"$1" && ! grep -q 'Cipher is ECDHE' <<<"$1"; }
for v in tls1 tls1_1; do
  out=$(s_client "-$v" -cipher 'DEFAULT:@SECLEVEL=0')
  check "-$v refused" refused "$out"
done
out=$(s_client -tls1_3)
check "TLS 1.3 only: refused (linkd speaks TLS 1.2)" refused "$out"
for ci in AES128-SHA ECDHE-ECDSA-AES128-SHA ECDHE-ECDSA-AES128-SHA256 ECDHE-ECDSA-AES256-SHA384; do
  out=$(s_client -tls1_2 -cipher "$ci")
  check "non-AEAD cipher $ci refused" refused "$out"
done
for ci in ECDHE-ECDSA-AES128-GCM-SHA256 ECDHE-ECDSA-AES256-GCM-SHA384 ECDHE-ECDSA-CHACHA20-POLY1305; do
  out=$(s_client -tls1_2 -cipher "$ci")
  expect_match "AEAD cipher $ci accepted" "$out" "Cipher is $ci"
done
out=$(s_client -alpn h2,http/1.1)
expect_match "ALPN offered h2,http/1.1: http/1.1 chosen" "$out" 'ALPN protocol: http/1.1'
expect_eq "refused handshakes are counted in linkd_tls_failures_total" "$(( $(metric linkd_tls_failures_total) - f0 >= 7 ))" 1

# ---- the stalled handshakes: dropped at the deadline (10 s), not before, not much later
for p in "${STALL_PIDS[@]}"; do wait_exit "$p" 25 >/dev/null; done
for m in none half; do
  read -r _ how secs end <"$T_TMP/stall.$m" 2>/dev/null
  desc="a client that connects and sends nothing"; [ "$m" = half ] && desc="a client that sends half a ClientHello"
  if [ -n "${secs:-}" ] && awk -v s="$secs" -v k="$T_SLOW" 'BEGIN{exit !(s >= 9.5 && s <= 10 + 2.5 * k)}' && [ "$end" != timeout ]; then
    pass "$desc: dropped at the handshake deadline (${secs} s, $end)"
  else
    fail "$desc: dropped at the handshake deadline" "$(cat "$T_TMP/stall.$m")"
  fi
  secs=
done
https GET /health
expect_eq "linkd served others meanwhile and still does" "$HTTP_STATUS" 200
wait_for 5 metric_is linkd_tls_connections 0
expect_eq "every TLS connection is gone (linkd_tls_connections)" "$(metric linkd_tls_connections)" 0
expect_match "linkd_tls_buffers_pooled is exported" "$(metric linkd_tls_buffers_pooled)" '^[0-9]+$'
# shutdown with a wss client connected
READY_FILE=$T_TMP/shut.ready $PY "$TESTS/tls_check.py" t_tls shutdown >"$T_TMP/shut.out" 2>&1 &
shut=$!
wait_for 10 test -s "$T_TMP/shut.ready"
linkd_stop
wait_exit "$shut" 15 >/dev/null
cat "$T_TMP/shut.out"
grep -q '^[A-Z]*: ' "$T_TMP/shut.out" || fail "SIGTERM with a wss client connected" "$(tail -n 3 "$T_TMP/shut.out")"
