#!/usr/bin/env bash
# JWT (SPEC §5): HS256 tokens from the Authorization header or ?token=, claims
# mapped into the user context of HTTP requests and WebSocket messages/events,
# 401 without a valid token on `auth` routes and auth-required WebSocket paths,
# 403 without one of the route's roles; exp/nbf checked; alg none refused.
. "$(dirname "$0")/lib.sh"

SECRET=test-secret-123
linkd_start --jwt-secret "$SECRET" || exit 0
svc_start a --name authsvc --instance auth-1 --route 'GET /open' --route 'GET /private auth' \
  --route 'GET /admin auth roles=admin,root' --ws /ws/auth --ws-auth || fail "service registers" "$(cat "$SVC_OUT")"
svc_start o --name opensvc --instance open-1 --ws /ws/open || fail "open ws service registers" "$(cat "$SVC_OUT")"

# tok CLAIMS-JSON [alg] [secret] : an HS256 (or alg none) JWT
tok() {
  $PY - "$1" "${2:-HS256}" "${3:-$SECRET}" <<'EOF'
import sys, json, hmac, hashlib, base64, time
claims = json.loads(sys.argv[1]); alg = sys.argv[2]; key = sys.argv[3].encode()
now = int(time.time())
for k, v in list(claims.items()):
    if isinstance(v, str) and v.startswith('now'):
        claims[k] = now + int(v[3:] or 0)
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b'=').decode()
h = b(json.dumps({'alg': alg, 'typ': 'JWT'}).encode()); p = b(json.dumps(claims).encode())
sig = '' if alg == 'none' else b(hmac.new(key, (h + '.' + p).encode(), hashlib.sha256).digest())
print(h + '.' + p + '.' + sig)
EOF
}
USER=$(tok '{"sub":"u-1","preferred_username":"ana","roles":["user"],"tenant_id":"t-9","exp":"now+600"}')
ADMIN=$(tok '{"sub":"u-2","username":"root","roles":["admin"],"exp":"now+600"}')
EXPIRED=$(tok '{"sub":"u-3","exp":"now-60"}')
NOTYET=$(tok '{"sub":"u-4","nbf":"now+600"}')
BADSIG=$(tok '{"sub":"u-5"}' HS256 wrong-secret)
NONE=$(tok '{"sub":"u-6"}' none)

http GET /open
expect_eq "open route without a token: 200, unauthenticated user" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["user"]["authenticated"]' 2>&1)" 200/false
http GET /open -H "Authorization: Bearer $USER"
expect_eq "token claims reach the service (sub, preferred_username, roles, tenant_id)" \
  "$(echo "$HTTP_BODY" | json '[j["user"][k] for k in ("user_id","username","roles","tenant_id","authenticated")]' 2>&1)" \
  '["u-1", "ana", ["user"], "t-9", true]'
http GET /private
expect_eq "auth route without a token: 401" "$HTTP_STATUS" 401
expect_eq "401 body type" "$(echo "$HTTP_BODY" | json 'j["error"]["type"]' 2>&1)" UNAUTHORIZED
http GET /private -H "Authorization: Bearer $USER"
expect_eq "auth route with a valid token: 200" "$HTTP_STATUS" 200
http GET "/private?token=$USER"
expect_eq "token in ?token= works too" "$HTTP_STATUS" 200
for t in EXPIRED NOTYET BADSIG NONE; do
  http GET /private -H "Authorization: Bearer ${!t}"
  expect_eq "auth route with a $t token: 401" "$HTTP_STATUS" 401
done
http GET /private -H "Authorization: Bearer not.a.jwt"
expect_eq "auth route with garbage token: 401" "$HTTP_STATUS" 401
http GET /admin -H "Authorization: Bearer $USER"
expect_eq "route with roles, token without them: 403" "$HTTP_STATUS" 403
expect_eq "403 body type" "$(echo "$HTTP_BODY" | json 'j["error"]["type"]' 2>&1)" FORBIDDEN
http GET /admin -H "Authorization: Bearer $ADMIN"
expect_eq "route with roles, token with one: 200 (username claim used)" "$HTTP_STATUS/$(echo "$HTTP_BODY" | json 'j["user"]["username"]' 2>&1)" 200/root

export LINKD_PORT LINKD_URL USER ADMIN EXPIRED A_OUT=${SVC_OUTS[a]} O_OUT=${SVC_OUTS[o]}
timeout 60 $PY - <<'EOF'
import os, sys
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_http_auth')
port = os.environ['LINKD_PORT']
def t():
    line, _ = handshake('127.0.0.1', port, '/ws/auth', STD)
    c.ok('auth-required WebSocket path without a token: 401', line.startswith('HTTP/1.1 401'), line)
    line, _ = handshake('127.0.0.1', port, '/ws/auth?token=' + os.environ['EXPIRED'], STD)
    c.ok('auth-required WebSocket path with an expired token: 401', line.startswith('HTTP/1.1 401'), line)
    A = WS('ws://127.0.0.1:%s/ws/auth?token=%s' % (port, os.environ['USER']))
    r = A.call('whoami')
    u = r and r['data']['user']
    c.eq('WebSocket inbound carries the user context (token in query)', u and [u['user_id'], u['username'], u['roles'], u['tenant_id'], u['authenticated']],
         ['u-1', 'ana', ['user'], 't-9', True])
    ev = svc_event(os.environ['A_OUT'], 'CONNECTED', r and r['data']['conn'])
    c.ok('CONNECTED carries the user context', ev is not None and ev['user']['user_id'] == 'u-1', ev)
    B = WS('ws://127.0.0.1:%s/ws/auth' % port, headers=['Authorization: Bearer ' + os.environ['ADMIN']])
    r = B.call('whoami')
    c.eq('token in the Authorization header on upgrade', r and r['data']['user']['user_id'], 'u-2')
    O = WS('ws://127.0.0.1:%s/ws/open' % port)
    r = O.call('whoami')
    c.eq('open path without a token: unauthenticated user', r and r['data']['user']['authenticated'], False)
    for w in (A, B, O):
        w.close()
c.run('ws auth', t)
EOF
[ $? -eq 0 ] || fail "auth ws script" "python exited"
check "linkd still running" linkd_alive
exit 0
