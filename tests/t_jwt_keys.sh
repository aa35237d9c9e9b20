#!/usr/bin/env bash
# JWT with public keys (SPEC §5): RS256 and ES256 tokens verified against the
# keys of --jwt-keys, given as PEM blocks or as a JWKS document; tokens signed
# by another key, or HS256 tokens when no secret is set, are refused; a bad
# key file stops linkd at start with exit 2.
. "$(dirname "$0")/lib.sh"

# Keys and tokens made with Debian's python3-cryptography.
$PY - "$T_TMP" <<'EOF' || fail "make keys and tokens" "python failed"
import sys, json, base64, time
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
d = sys.argv[1]
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b'=').decode()
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
other = ec.generate_private_key(ec.SECP256R1())
pem = lambda k: k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
open(d + '/keys.pem', 'w').write(pem(rsa_key) + pem(ec_key))
rn = rsa_key.public_key().public_numbers(); en = ec_key.public_key().public_numbers()
ib = lambda i, n: i.to_bytes(n, 'big')
jwks = {'keys': [{'kty': 'RSA', 'n': b(ib(rn.n, 256)), 'e': b(ib(rn.e, 3))},
                 {'kty': 'EC', 'crv': 'P-256', 'x': b(ib(en.x, 32)), 'y': b(ib(en.y, 32))},
                 {'kty': 'oct', 'k': 'c2VjcmV0'}]}
open(d + '/keys.jwks', 'w').write(json.dumps(jwks))
def tok(alg, key, claims):
    h = b(json.dumps({'alg': alg, 'typ': 'JWT'}).encode()); p = b(json.dumps(claims).encode())
    msg = (h + '.' + p).encode()
    if alg == 'RS256':
        sig = key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
        sig = ib(r, 32) + ib(s, 32)
    return h + '.' + p + '.' + b(sig)
c = {'sub': 'k-1', 'preferred_username': 'kim', 'roles': ['admin'], 'exp': int(time.time()) + 600}
toks = {'RS': tok('RS256', rsa_key, c), 'ES': tok('ES256', ec_key, c), 'OTHER': tok('ES256', other, c),
        'RS_AS_ES': tok('RS256', rsa_key, c).split('.')[0].replace('UlMy', 'RVMy') + '.' + tok('RS256', rsa_key, c).split('.', 1)[1]}
for k, v in toks.items():
    open(d + '/' + k, 'w').write(v)
open(d + '/bad.pem', 'w').write('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n')
EOF

for form in pem jwks; do
  linkd_start --jwt-keys "$T_TMP/keys.$form" || continue
  svc_start k --name keysvc --instance keys-1 --route 'GET /private auth' --route 'GET /admin auth roles=admin' \
    || fail "$form: service registers" "$(cat "$SVC_OUT")"
  for t in RS ES; do
    http GET /private -H "Authorization: Bearer $(cat "$T_TMP/$t")"
    expect_eq "$form keys: ${t}256 token accepted, claims reach the service" \
      "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["user"]["user_id"]+"/"+j["user"]["username"]' 2>&1)" "200/k-1/kim"
    http GET /admin -H "Authorization: Bearer $(cat "$T_TMP/$t")"
    expect_eq "$form keys: ${t}256 token's roles checked" "$HTTP_STATUS" 200
  done
  http GET /private -H "Authorization: Bearer $(cat "$T_TMP/OTHER")"
  expect_eq "$form keys: ES256 token signed by an unknown key: 401" "$HTTP_STATUS" 401
  http GET /private -H "Authorization: Bearer $(cat "$T_TMP/RS_AS_ES")"
  expect_eq "$form keys: RS256 signature presented as ES256: 401" "$HTTP_STATUS" 401
  http GET /private -H "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
  expect_eq "$form keys: HS256 token without --jwt-secret: 401" "$HTTP_STATUS" 401
  check "$form keys: linkd still running" linkd_alive
  svc_kill k TERM
  linkd_stop
  unset LINKD_PORT LINKD_SOCK
done

out=$("${LINKD[@]}" --jwt-keys "$T_TMP/bad.pem" --check-config 2>&1); rc=$?
expect_eq "a key file that does not parse: exit 2" "$rc" 2
expect_match "... naming jwt-keys" "$out" "jwt-keys"
out=$("${LINKD[@]}" --jwt-keys "$T_TMP/nonexistent" --check-config 2>&1); rc=$?
expect_eq "a key file that is missing: exit 2" "$rc" 2
