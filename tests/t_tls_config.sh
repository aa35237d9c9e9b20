#!/usr/bin/env bash
# TLS settings (issue 9): --check-config (and a start) refuse, with exit 2 and
# a message naming the file, a certificate that is expired, not yet valid,
# unreadable or not PEM, a key that does not match, is encrypted or may be
# read by others, a bad client CA, --tls-listen without a certificate. Then
# SIGHUP: a new certificate (and later a client CA) for new connections while
# a wss client stays connected; a reload that fails keeps what is in force;
# --tls-listen only changes at a restart.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls_lib.sh"

tls_make_pki "$PKI" || exit 0
P=$PKI
PORT=$(free_port)
# cc NAME WANT_EXIT WANT_REGEX [settings...] : linkd --check-config with the TLS
# settings given; its exit status and message
cc() {
  local name=$1 want=$2 re=$3 out rc; shift 3
  out=$(timeout $((20 * T_SLOW)) "${LINKD[@]}" --check-config --listen 127.0.0.1:1 --socket "$T_TMP/cc.sock" "$@" 2>&1); rc=$?
  if [ "$rc" = "$want" ] && printf '%s' "$out" | grep -Eq -- "$re"; then pass "$name"
  else fail "$name" "exit $rc, want $want; '$(echo "$out" | tail -n 2 | tr '\n' ' ' | cut -c1-300)' !~ /$re/"; fi
}
T=(--tls-listen "127.0.0.1:$PORT")
cc "--check-config: a good certificate and key: exit 0" 0 'configuration ok' "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/srv.key"
cc "--check-config: a chain file (leaf + intermediate) and an RSA key: exit 0" 0 'configuration ok' "${T[@]}" --tls-cert "$P/srv2.crt" --tls-key "$P/srv2.key"
cc "expired certificate: exit 2 naming the file and the date" 2 "tls-cert: .*$P/expired.crt.*expired on 2021-01-01" \
  "${T[@]}" --tls-cert "$P/expired.crt" --tls-key "$P/srv.key"
cc "certificate not yet valid: exit 2 naming the file" 2 "tls-cert: .*$P/future.crt.*not valid before 2090" \
  "${T[@]}" --tls-cert "$P/future.crt" --tls-key "$P/srv.key"
cc "key that does not match the certificate: exit 2 naming both files" 2 "tls-key: $P/other.key does not match .*$P/srv.crt" \
  "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/other.key"
cc "certificate file missing: exit 2 naming it" 2 "tls-cert: cannot read $P/nope.crt" "${T[@]}" --tls-cert "$P/nope.crt" --tls-key "$P/srv.key"
cc "key file missing: exit 2 naming it" 2 "tls-key: cannot read $P/nope.key" "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/nope.key"
if [ "$(id -u)" != 0 ]; then
  cp "$P/srv.key" "$P/locked.key"; chmod 000 "$P/locked.key"
  cc "key file unreadable (mode 000): exit 2 naming it" 2 "tls-key: cannot read $P/locked.key" "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/locked.key"
fi
cp "$P/srv.key" "$P/open.key"; chmod 0644 "$P/open.key"
cc "key readable by others (0644): exit 2 naming it and the mode" 2 "tls-key: $P/open.key may be read by every user \(mode 0644\)" \
  "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/open.key"
chmod 0604 "$P/open.key"
cc "key readable by others only (0604): exit 2" 2 "tls-key: $P/open.key may be read" "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/open.key"
chmod 0640 "$P/open.key"
cc "key readable by its group (0640): accepted" 0 'configuration ok' "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/open.key"
echo "not a certificate" >"$P/junk.pem"; chmod 600 "$P/junk.pem"
cc "certificate file that is not PEM: exit 2 naming it" 2 "tls-cert: $P/junk.pem holds no valid PEM certificate" "${T[@]}" --tls-cert "$P/junk.pem" --tls-key "$P/srv.key"
cc "key file that is not PEM: exit 2 naming it" 2 "tls-key: $P/junk.pem holds no valid unencrypted PEM private key" "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/junk.pem"
(umask 077; $OPENSSL pkey -in "$P/srv.key" -aes256 -passout pass:secret -out "$P/enc.key" 2>/dev/null)
cc "encrypted key: exit 2 naming it" 2 "tls-key: $P/enc.key holds no valid unencrypted PEM private key" "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/enc.key"
cc "client CA file missing: exit 2 naming it" 2 "tls-client-ca: cannot read $P/nope-ca.crt" \
  "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/srv.key" --tls-client-ca "$P/nope-ca.crt"
cc "client CA file that is not PEM: exit 2 naming it" 2 "tls-client-ca: $P/junk.pem holds no valid PEM" \
  "${T[@]}" --tls-cert "$P/srv.crt" --tls-key "$P/srv.key" --tls-client-ca "$P/junk.pem"
cc "--tls-listen without --tls-cert/--tls-key: exit 2" 2 'tls-listen: .*needs tls-cert and tls-key' "${T[@]}"
cc "--tls-listen that is not host:port: exit 2" 2 'tls-listen' --tls-listen nowhere --tls-cert "$P/srv.crt" --tls-key "$P/srv.key"
printf 'tls_listen = 127.0.0.1:%s\ntls_cert = %s\ntls_key = %s\n' "$PORT" "$P/expired.crt" "$P/srv.key" >"$T_TMP/bad.conf"
cc "the same from a config file (tls_cert = an expired certificate): exit 2 naming it" 2 "$P/expired.crt.*expired" --config "$T_TMP/bad.conf"
out=$(LINKD_TLS_LISTEN=127.0.0.1:$PORT LINKD_TLS_CERT=$P/srv.crt LINKD_TLS_KEY=$P/open.key timeout $((20 * T_SLOW)) "${LINKD[@]}" --check-config \
  --listen 127.0.0.1:1 --socket "$T_TMP/cc.sock" 2>&1); rc=$?
expect_eq "the same from LINKD_TLS_* environment variables: accepted (key 0640)" "$rc" 0
# a start, not a check: refused before anything listens
timeout $((20 * T_SLOW)) "${LINKD[@]}" --listen "127.0.0.1:$(free_port)" --socket "$T_TMP/start.sock" "${T[@]}" \
  --tls-cert "$P/expired.crt" --tls-key "$P/srv.key" >"$T_TMP/start.out" 2>&1; rc=$?
expect_eq "starting with an expired certificate: exit 2 before listening" "$rc/$(test -S "$T_TMP/start.sock" && echo socket || echo none)" "2/none"
expect_match "... the message names the file" "$(cat "$T_TMP/start.out")" "$P/expired.crt"

# ---- SIGHUP reload (settings from a config file, certificate files at fixed paths)
LIVE_CERT=$T_TMP/live.crt LIVE_KEY=$T_TMP/live.key
cp "$P/srv.crt" "$LIVE_CERT"; (umask 077; cp "$P/srv.key" "$LIVE_KEY")
TLS_PORT=$PORT
TLS_URL="https://127.0.0.1:$TLS_PORT"
printf 'tls_listen = 127.0.0.1:%s\ntls_cert = %s\ntls_key = %s\n' "$TLS_PORT" "$LIVE_CERT" "$LIVE_KEY" >"$T_TMP/linkd.conf"
linkd_start --config "$T_TMP/linkd.conf" || exit 0
svc_start t --name tsvc --instance t-1 --ws /ws/t --route "GET /t/whoami" || fail "test service registers" "$(cat "$SVC_OUT")"
export TLS_PORT LINKD_PORT PKI T_SLOW LINKD_PID LINKD_LOG LIVE_CERT LIVE_KEY
$PY "$TESTS/tls_check.py" t_tls_config reload

# back to the first certificate (same key type as the tickets below)
cp "$P/srv.crt" "$LIVE_CERT"; (umask 077; cp "$P/srv.key" "$LIVE_KEY.new"); mv "$LIVE_KEY.new" "$LIVE_KEY"
n=$(metric linkd_reloads_total)
kill -HUP "$LINKD_PID"
wait_for 10 metric_is linkd_reloads_total $((n + 1))
expect_eq "reload back to the first certificate (serial 0x1001)" \
  "$(s_client </dev/null | $OPENSSL x509 -noout -serial 2>&1)" "serial=1001"
# a reload that brings a client CA: new connections must show a certificate
CONF=$T_TMP/linkd.conf $PY "$TESTS/tls_check.py" t_tls_config ticket-reload   # appends tls_client_ca, SIGHUP
https GET /t/whoami
expect_eq "reload adding tls_client_ca: a new connection without a client certificate is refused" "$HTTP_STATUS" 000
https GET /t/whoami --cert "$P/cli.crt" --key "$P/cli.key"
expect_eq "... with one it is served and the service sees it" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["user"]["client_cert_cn"]' 2>&1)" 200/device-42
# --tls-listen is read at start only
other=$(free_port)
sed -i "s/^tls_listen = .*/tls_listen = 127.0.0.1:$other/" "$T_TMP/linkd.conf"
n=$(metric linkd_reloads_total)
kill -HUP "$LINKD_PID"
wait_for 10 metric_is linkd_reloads_total $((n + 1))
expect_match "a changed tls_listen is named as restart-only in the log" "$(grep 'only take effect at a restart' "$LINKD_LOG" | tail -n 1)" 'tls-listen'
https GET /health --cert "$P/cli.crt" --key "$P/cli.key"
expect_eq "... and the TLS listener stays where it was" "$HTTP_STATUS" 200
expect_eq "... nothing listens on the new address" "$(curl -s -m 2 -k -o /dev/null -w '%{http_code}' "https://127.0.0.1:$other/health")" 000
linkd_stop
