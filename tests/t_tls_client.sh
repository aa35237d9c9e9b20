#!/usr/bin/env bash
# TLS client certificates (issue 9): with --tls-client-ca a client must show
# a certificate from that CA; its subject CN and SHA-256 fingerprint reach
# the services in the user context (HTTP requests, WebSocket events and
# messages), beside a token's claims. No certificate, or one from another CA:
# the handshake is refused. The plain listener never shows certificate fields.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls_lib.sh"

tls_make_pki "$PKI" || exit 0
tls_start --tls-client-ca "$PKI/ca.crt" --jwt-secret tls-client-secret || exit 0
svc_start t --name tsvc --instance t-1 --ws /ws/t --route "GET /t/whoami" || fail "test service registers" "$(cat "$SVC_OUT")"
CLI_FP=$(tls_fingerprint "$PKI/cli.crt")
# an HS256 token for user u-7
TOKEN=$($PY -c '
import base64, hmac, hashlib, json, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()); p = b(json.dumps({"sub": "u-7", "exp": int(time.time()) + 600}).encode())
print((h + b"." + p + b"." + b(hmac.new(b"tls-client-secret", h + b"." + p, hashlib.sha256).digest())).decode())')
export TLS_PORT LINKD_PORT PKI T_SLOW CLI_FP TOKEN

# curl first: the client certificate as curl sends it
https GET /t/whoami --cert "$PKI/cli.crt" --key "$PKI/cli.key"
expect_eq "curl with the client certificate: 200, CN and fingerprint reach the service" \
  "$HTTP_STATUS $(echo "$HTTP_BODY" | json '" ".join([j["user"]["client_cert_cn"], j["user"]["client_cert_sha256"]])' 2>&1)" "200 device-42 $CLI_FP"
n0=$(svc_count t '^HTTP ')
https GET /t/whoami
expect_match "curl without a client certificate: the handshake fails (no HTTP status)" "$HTTP_STATUS" '^000$'
https GET /t/whoami --cert "$PKI/rogue.crt" --key "$PKI/rogue.key"
expect_match "curl with a certificate from another CA: the handshake fails" "$HTTP_STATUS" '^000$'
expect_eq "... and neither request reached the service" "$(svc_count t '^HTTP ')" "$n0"

$PY "$TESTS/tls_check.py" t_tls_client client-cert
$PY "$TESTS/tls_check.py" t_tls_client resume-cert

expect_eq "the service's CONNECTED event carries the certificate (CN, fingerprint)" \
  "$(grep -m1 '^EVENT {"type":"CONNECTED".*"client_cert_cn":"device-42"' "${SVC_OUTS[t]}" | sed 's/^EVENT //' | json 'j["user"]["client_cert_sha256"]' 2>&1)" "$CLI_FP"
expect_match "the service's INBOUND lines carry it too" "$(grep '^INBOUND' "${SVC_OUTS[t]}" | head -n 1)" "\"client_cert_sha256\":\"$CLI_FP\""
f=$(metric linkd_tls_failures_total)
expect_eq "refused client certificates count in linkd_tls_failures_total (>= 4)" "$(( ${f:-0} >= 4 ))" 1
wait_for 5 metric_is linkd_tls_connections 0
expect_eq "every TLS connection is gone" "$(metric linkd_tls_connections)" 0
linkd_stop
