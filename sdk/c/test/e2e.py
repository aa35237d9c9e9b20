#!/usr/bin/python3
"""End-to-end checks of the C library through a real linkd (tests/t_sdk_c.sh runs it).

    e2e.py BASE_URL SECRET SVC_OUT SVC_PID -- SVC_CMD...

BASE_URL is linkd's http://127.0.0.1:PORT (started with --jwt-secret SECRET),
SVC_OUT the output file of the test service (sdk/c/test/svc_c.c) already
registered as "csvc" (pid SVC_PID), SVC_CMD the command that starts another
instance. Prints PASS:/FAIL: lines (prefix t_sdk_c: e2e:).
"""
import base64, hashlib, hmac, json, os, signal, subprocess, sys, time, urllib.request, urllib.error

sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.join(os.path.dirname(__file__), '../../../tests')))
from ws_client import WS, Checks, Closed, wait_until  # noqa: E402

base, secret, svc_out, svc_pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
svc_cmd = sys.argv[sys.argv.index('--') + 1:]
ws_url = base.replace('http://', 'ws://') + '/ws/c'
C = Checks('t_sdk_c: e2e')
SLOW = float(os.environ.get('T_SLOW', '1'))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()


def token(sub, roles, name='u'):
    h = b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())
    p = b64(json.dumps({'sub': sub, 'preferred_username': name, 'roles': roles, 'exp': int(time.time()) + 3600}).encode())
    sig = hmac.new(secret.encode(), (h + '.' + p).encode(), hashlib.sha256).digest()
    return h + '.' + p + '.' + b64(sig)


ADMIN = token('adm1', ['admin', 'ops'], 'ada')
USER = token('usr1', ['viewer'], 'bob')


def http(method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10 * SLOW) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def lines(kind, path=None):
    out = []
    with open(path or svc_out) as f:
        for line in f:
            if line.startswith(kind + ' '):
                rest = line[len(kind) + 1:].strip()
                try:
                    out.append(json.loads(rest))
                except ValueError:
                    out.append(rest)
    return out


def run(name, fn):
    try:
        fn()
    except Exception as e:  # one FAIL, the script goes on
        C.ok(name, False, '%s: %s' % (type(e).__name__, e))


# ---------------------------------------------------------------- HTTP
def t_http():
    st, body, _ = http('GET', '/c/hello/al%20ice?x=a%2Bb&y=2', headers={'User-Agent': 'e2e/1'})
    j = json.loads(body) if st == 200 else {}
    C.ok('HTTP GET: route param (percent-decoded), query, header, method, path, pattern',
         st == 200 and j.get('name') == 'al ice' and j.get('x') == 'a+b' and j.get('agent') == 'e2e/1'
         and j.get('route') == '/c/hello/:name' and j.get('path') == '/c/hello/al%20ice' and j.get('method') == 'GET',
         '%s %s' % (st, body[:300]))
    st, body, _ = http('GET', '/c/hello/x', headers={'Authorization': 'Bearer ' + USER})
    j = json.loads(body) if st == 200 else {}
    C.ok('HTTP: the JWT user reaches the handler (id, name, roles)',
         st == 200 and j['user'] == {'id': 'usr1', 'name': 'bob', 'tenant': '', 'authenticated': True, 'roles': ['viewer']},
         '%s %s' % (st, body[:300]))
    blob = bytes(range(256)) * 40
    st, body, h = http('POST', '/c/echo', blob, {'Content-Type': 'application/x-test'})
    C.ok('HTTP POST: a binary body (NUL bytes included) and response headers round-trip',
         st == 200 and body == blob and h.get('content-type') == 'application/x-test' and h.get('x-body-bytes') == str(len(blob)),
         '%s len %d headers %s' % (st, len(body), h))
    st1, _, _ = http('GET', '/c/admin')
    st2, b2, _ = http('GET', '/c/admin', headers={'Authorization': 'Bearer ' + USER})
    st3, b3, _ = http('GET', '/c/admin', headers={'Authorization': 'Bearer ' + ADMIN})
    C.ok('HTTP route with roles: 401 without a token, 403 without the role, 200 with it',
         (st1, st2, st3) == (401, 403, 200) and json.loads(b3) == {'admin': True}, '%s %s %s %s' % (st1, st2, st3, b2[:200]))
    st, body, h = http('GET', '/c/nothing')
    C.ok('HTTP handler that answers nothing: 200 null', st == 200 and body == b'null', '%s %r' % (st, body[:100]))
    st, body, _ = http('GET', '/c/error')
    C.ok('HTTP error answer: status and {"error":{type,message}} (escaped)',
         st == 409 and json.loads(body) == {'error': {'type': 'CONFLICT', 'message': 'already "there"'}}, '%s %r' % (st, body[:200]))
    st, body, _ = http('PUT', '/c/any', b'{}', {'Content-Type': 'application/json'})
    C.ok('HTTP route with method *: PUT answered', st == 201 and json.loads(body) == {'method': 'PUT'}, '%s %r' % (st, body[:200]))
    st, body, _ = http('GET', '/c/big?n=300000')
    C.ok('HTTP response of 300,000 bytes', st == 200 and len(body) == 300000 and body[:3] == b'bbb', '%s len %d' % (st, len(body)))


# ---------------------------------------------------------------- WebSocket
def t_ws():
    a = WS(ws_url, headers=['Authorization: Bearer ' + ADMIN])
    b = WS(ws_url + '?token=' + USER)
    anon = WS(ws_url)
    r = a.call('echo', {'x': [1, 'two', None]})
    C.ok('message and reply (data round-trips)', r and r.get('data') == {'x': [1, 'two', None]}, r)
    ca, cb, cn = a.whoami(), b.whoami(), anon.whoami()
    r = a.call('whoami')
    C.ok('the connection id and the JWT user reach the handler',
         r and r['data']['user'] == {'id': 'adm1', 'name': 'ada', 'tenant': '', 'authenticated': True, 'roles': ['admin', 'ops']}
         and ca and cb and ca != cb, r)
    ev = wait_until(lambda: [e for e in lines('CONNECT') if e['id'] == ca], 5 * SLOW)
    C.ok('CONNECT event with the user, path and remote address',
         ev and ev[0]['user']['id'] == 'adm1' and ev[0]['path'] == '/ws/c' and ev[0]['remote'].startswith('127.0.0.1:') and ev[0]['at'] > 0,
         ev)
    for w in (a, b):
        r = w.call('join', {'room': 'lobby'})
    C.ok('join answered with an op id', r and r['data'].get('joined') is True and r['data']['op'] > 0, r)
    r = a.call('say', {'room': 'lobby', 'text': 'hello room', 'except_self': True})
    got_b = b.expect(lambda m: m.get('type') == 'said', 5 * SLOW)
    seen_a = [m for m in a.sync() if isinstance(m, dict) and m.get('type') == 'said']
    C.ok('push to a room, except the sender: the other member gets it, the sender does not',
         got_b and got_b['data'] == {'from': ca, 'text': 'hello room'} and not seen_a, (got_b, seen_a))
    anon_seen = [m for m in anon.sync() if isinstance(m, dict) and m.get('type') == 'said']
    C.ok('a connection outside the room gets nothing', not anon_seen, anon_seen)
    res = wait_until(lambda: [l for l in lines('RESULT') if l.split()[0] == str(r['data']['op'])], 5 * SLOW)
    C.ok('on_result: the room push was delivered to 1 connection', res and res[0].split()[1:] == ['1', '-', '1'], res)
    r = b.call('all', {'text': 'to all', 'except_self': True})
    got = [w.expect(lambda m: m.get('type') == 'everyone', 3 * SLOW) for w in (a, anon)]
    seen_b = [m for m in b.sync() if isinstance(m, dict) and m.get('type') == 'everyone']
    C.ok('push to everyone except the sender', all(g and g['data']['text'] == 'to all' for g in got) and not seen_b, (got, seen_b))
    r = anon.call('dm', {'to': cb, 'text': 'psst'})
    g = b.expect(lambda m: m.get('type') == 'dm', 3 * SLOW)
    C.ok('push to one connection', g and g['data'] == {'text': 'psst'}, g)
    r = a.call('rooms')
    C.ok('a deferred reply (after linkd answered the rooms query)', r and r.get('data') == {'ok': True, 'rooms': ['lobby']}, r)
    r = b.call('leave', {'room': 'lobby'})
    r = b.call('rooms')
    C.ok('leave: the room is gone from the connection', r and r.get('data') == {'ok': True, 'rooms': []}, r)
    r1, r2, r3 = anon.call('admin'), b.call('admin'), a.call('admin')
    C.ok('handler with roles: UNAUTHORIZED without a token, FORBIDDEN without the role, runs with it',
         r1 and r1.get('error', {}).get('type') == 'UNAUTHORIZED' and r2 and r2.get('error', {}).get('type') == 'FORBIDDEN'
         and r2['error']['code'] == 403 and r3 and r3.get('data') == {'admin': True}, (r1, r2, r3))
    r = anon.call('authed')
    C.ok('handler with auth: UNAUTHORIZED without a token', r and r.get('error', {}).get('code') == 401, r)
    r = a.call('fail')
    C.ok('error reply: type, message, code', r and r.get('error') == {'type': 'VALIDATION_ERROR', 'message': 'bad thing', 'code': 422}, r)
    r = a.call('silent')
    C.ok('a handler that answers nothing: data null', r is not None and 'data' in r and r['data'] is None and 'error' not in r, r)
    r = a.call('no.such.type')
    C.ok('a type without a handler: NOT_FOUND', r and r.get('error', {}).get('type') == 'NOT_FOUND', r)
    a.send('echo', {'no': 'id'})
    seen = a.sync()
    C.ok('a message without an id: no reply', not [m for m in seen if isinstance(m, dict) and 'id' in m], seen)
    r = a.call('big', {'n': 40000})
    C.ok('a 40,000-byte reply', r and isinstance(r.get('data'), str) and len(r['data']) == 40000, str(r)[:200])
    anon.send('kick', None, 'k1')
    closed = anon.wait_close(5 * SLOW)
    C.ok('disconnect: the connection is closed with the code given (4001)', closed and closed[0] == 4001, closed)
    ev = wait_until(lambda: [e for e in lines('DISCONNECT') if e['id'] == cn], 5 * SLOW)
    C.ok('DISCONNECT event', ev, ev)
    b.close()
    ev = wait_until(lambda: [e for e in lines('DISCONNECT') if e['id'] == cb], 5 * SLOW)
    C.ok('DISCONNECT event lists the rooms the connection was in (none after leave)', ev and ev[0]['rooms'] == [], ev)
    return a, ca


# ---------------------------------------------------------------- the service restarts, clients stay
def t_restart(a, ca):
    os.kill(svc_pid, signal.SIGTERM)
    gone = wait_until(lambda: not os.path.exists('/proc/%d' % svc_pid) or open('/proc/%d/stat' % svc_pid).read().split()[2] == 'Z', 10 * SLOW)
    ex = wait_until(lambda: lines('EXIT'), 5 * SLOW)
    C.ok('SIGTERM: linkd_run() returns 0 (linkd_stop from the signal handler)', gone and ex and str(ex[0]).startswith('0 '), ex)
    r = a.call('echo', 1)
    C.ok('service away: the client stays connected and gets SERVICE_UNAVAILABLE', r and r.get('error', {}).get('type') == 'SERVICE_UNAVAILABLE', r)
    out2 = svc_out + '.2'
    p = subprocess.Popen(svc_cmd, stdout=open(out2, 'w'), stderr=open(out2 + '.err', 'w'))
    try:
        ok = wait_until(lambda: lines('REGISTERED', out2), 15 * SLOW)
        C.ok('a new instance registers', ok, open(out2 + '.err').read()[-300:])
        ev = wait_until(lambda: [e for e in lines('EXISTING', out2) if e['id'] == ca], 5 * SLOW)
        C.ok('it gets EXISTING for the live connection, with its user and rooms',
             ev and ev[0]['user']['id'] == 'adm1' and ev[0]['rooms'] == ['lobby'], ev)
        r = a.call('echo', {'again': True})
        C.ok('the same client connection is served by the new instance', r and r.get('data') == {'again': True}, r)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = 'timeout'
        C.ok('the second instance exits 0 on SIGTERM (valgrind: no errors, no leaks)', rc == 0,
             'exit %s: %s' % (rc, open(out2 + '.err').read()[-400:]))
    a.close()


run('HTTP', t_http)
res = None
try:
    res = t_ws()
except Exception as e:
    C.ok('WebSocket', False, '%s: %s' % (type(e).__name__, e))
if res:
    run('service restart', lambda: t_restart(*res))
sys.exit(0)
