# TLS helpers for tests/t_tls*.sh. Source after lib.sh:
#   . "$(dirname "$0")/lib.sh"; . "$(dirname "$0")/tls_lib.sh"
#
# tls_make_pki DIR   a test PKI made here, with Debian's openssl (and Python's
#                    cryptography for the dates openssl 3.0 cannot set):
#   ca.crt/.key      "Linkd Test CA" (EC P-256)
#   ca2.crt/.key     "Other Test CA": signs nothing linkd trusts
#   srv.crt/.key     CN=localhost, serial 0x1001, SAN localhost + 127.0.0.1, EC P-256, by ca
#   srv2.crt/.key    CN=linkd-reloaded, serial 0x1002, RSA 2048, by an intermediate
#                    CA ("Linkd Test Intermediate", by ca): srv2.crt holds leaf + intermediate
#   cli.crt/.key     client CN=device-42, by ca
#   rogue.crt/.key   client CN=device-42 too, but by ca2
#   expired.crt      CN=localhost, key srv.key, by ca, valid 2020-01-01 .. 2021-01-01
#   future.crt       CN=localhost, key srv.key, by ca, valid from 2090
#   other.key        a key that matches no certificate
# Private keys are mode 0600.
#
# tls_start [flags...]  linkd_start with --tls-listen on a free port and the
#                       srv certificate (override with TLS_CERT= / TLS_KEY=);
#                       sets TLS_PORT, TLS_URL.
# https METHOD PATH [curl args...]  like http, on TLS_URL, trusting ca.crt.

PKI=$T_TMP/pki
OPENSSL=${OPENSSL:-openssl}

tls_make_pki() {
  local d=$1 o
  mkdir -p "$d"
  o=$(
    set -e
    umask 077
    cd "$d"
    ec() { $OPENSSL genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    ec ca.key; ec ca2.key; ec srv.key; ec cli.key; ec rogue.key; ec other.key; ec ica.key
    $OPENSSL genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out srv2.key 2>/dev/null
    umask 022
    cat >ext.cnf <<'EOF'
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[srv]
basicConstraints = CA:false
subjectAltName = DNS:localhost, IP:127.0.0.1
extendedKeyUsage = serverAuth
[cli]
basicConstraints = CA:false
extendedKeyUsage = clientAuth
EOF
    $OPENSSL req -x509 -new -key ca.key -subj "/CN=Linkd Test CA" -days 30 -set_serial 1 -out ca.crt -extensions ca -config ext.cnf 2>/dev/null \
      || $OPENSSL req -x509 -new -key ca.key -subj "/CN=Linkd Test CA" -days 30 -out ca.crt 2>/dev/null
    $OPENSSL req -x509 -new -key ca2.key -subj "/CN=Other Test CA" -days 30 -out ca2.crt 2>/dev/null
    sign() {  # sign NAME KEY SUBJ SERIAL EXT CA
      $OPENSSL req -new -key "$2" -subj "$3" -out "$1.csr" 2>/dev/null
      $OPENSSL x509 -req -in "$1.csr" -CA "$6.crt" -CAkey "$6.key" -set_serial "$4" -days 30 \
        -extfile ext.cnf -extensions "$5" -out "$1.crt" 2>/dev/null
    }
    sign srv srv.key "/CN=localhost" 0x1001 srv ca
    sign ica ica.key "/CN=Linkd Test Intermediate" 0x1ca ca ca
    sign srv2 srv2.key "/CN=linkd-reloaded" 0x1002 srv ica
    cat ica.crt >>srv2.crt
    sign cli cli.key "/O=Linkd Tests/CN=device-42" 0x2001 cli ca
    sign rogue rogue.key "/CN=device-42" 0x2002 cli ca2
    # openssl 3.0's x509 cannot back-date: the two out-of-date certificates
    # come from Python's cryptography (Debian python3-cryptography)
    $PY - <<'EOF'
import datetime
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
load = lambda f: open(f, 'rb').read()
ca = x509.load_pem_x509_certificate(load('ca.crt'))
ca_key = serialization.load_pem_private_key(load('ca.key'), None)
key = serialization.load_pem_private_key(load('srv.key'), None)
def make(name, serial, start, end):
    c = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'localhost')]))
         .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName('localhost')]), False)
         .sign(ca_key, hashes.SHA256()))
    open(name, 'wb').write(c.public_bytes(serialization.Encoding.PEM))
make('expired.crt', 0x1003, datetime.datetime(2020, 1, 1), datetime.datetime(2021, 1, 1))
make('future.crt', 0x1004, datetime.datetime(2090, 1, 1), datetime.datetime(2091, 1, 1))
EOF
    chmod 600 ./*.key
    ls ca.crt ca2.crt srv.crt srv2.crt cli.crt rogue.crt expired.crt future.crt >/dev/null
  ) 2>&1 || { fail "test PKI made with openssl" "$o"; return 1; }
  return 0
}

# sha256 fingerprint of a PEM certificate as linkd gives it: lower-case hex, no colons
tls_fingerprint() {
  $OPENSSL x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//; s/://g' | tr 'A-F' 'a-f'
}

tls_start() {
  TLS_PORT=${TLS_PORT:-$(free_port)}
  TLS_URL="https://127.0.0.1:$TLS_PORT"
  linkd_start --tls-listen "127.0.0.1:$TLS_PORT" --tls-cert "${TLS_CERT:-$PKI/srv.crt}" --tls-key "${TLS_KEY:-$PKI/srv.key}" "$@"
}

https() {
  local m=$1 p=$2; shift 2
  HTTP_STATUS=$(curl -s -m "${HTTP_MAXTIME:-10}" --cacert "$PKI/ca.crt" -X "$m" -o "$T_TMP/body" -w '%{http_code}' "$@" "$TLS_URL$p")
  HTTP_BODY=$(cat "$T_TMP/body" 2>/dev/null)
}

# s_client ARGS... : openssl s_client to the TLS port, stdin closed; prints its output
s_client() {
  timeout $((10 * T_SLOW)) $OPENSSL s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$PKI/ca.crt" "$@" </dev/null 2>&1
}
