#!/usr/bin/python3
"""The admin console's JSON API (issue 14) against a running linkd started with
--admin-listen and --jwt-secret (tests/t_admin.sh starts it, with the test
services chat, other and plain).

  admin_check.py BASE_URL ADMIN_URL SECRET SVC_OUT LINKD_LOG LINKD_PID CHAT_PID

Sections: auth (401/403 cases), figures (against /metrics and what the test
set up), series (per-second samples sum to the messages sent), actions (push
and disconnect do what they say, errors), hostile input on the admin port.
Prints PASS:/FAIL: lines.
"""
import base64, hashlib, hmac, json, os, re, socket, sys, time, urllib.request, urllib.error
sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.dirname(os.path.abspath(__file__))))
from ws_client import WS, Checks, svc_event, wait_until  # noqa: E402

C = Checks('t_admin')
BASE, ADMIN, SECRET, SVC_OUT, LOG, PID, CHAT_PID = sys.argv[1:8]
WSBASE = 'ws://' + BASE.split('://', 1)[1]
AHOST, APORT = ADMIN.split('://', 1)[1].rsplit(':', 1)
SLOW = int(os.environ.get('T_SLOW', '1'))


# ---------------------------------------------------------------- helpers
def b64(d):
    return base64.urlsafe_b64encode(d).rstrip(b'=').decode()


def jwt(claims, secret=SECRET, alg='HS256'):
    h = b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())
    p = b64(json.dumps(claims).encode())
    sig = '' if alg == 'none' else b64(hmac.new(secret.encode(), (h + '.' + p).encode(), hashlib.sha256).digest())
    return h + '.' + p + '.' + sig


NOW = int(time.time())
ROOT_CLAIMS = {'sub': 'u-root', 'preferred_username': 'root', 'roles': ['dev', 'admin'], 'exp': NOW + 900}
TOK = {
    'admin': jwt(ROOT_CLAIMS),
    'user': jwt({'sub': 'u-ann', 'preferred_username': 'ann', 'roles': ['user'], 'exp': NOW + 900}),
    'bob': jwt({'sub': 'u-bob', 'roles': ['user'], 'exp': NOW + 900}),
    'expired': jwt(dict(ROOT_CLAIMS, exp=NOW - 60)),
    'notyet': jwt(dict(ROOT_CLAIMS, nbf=NOW + 600)),
    'forged': jwt(ROOT_CLAIMS, secret='not-the-secret'),
    'none': jwt(ROOT_CLAIMS, alg='none'),
}
# a user's token with the payload swapped for one with the admin role, the user's signature kept
_u = TOK['user'].split('.')
TOK['tampered'] = _u[0] + '.' + b64(json.dumps(dict(ROOT_CLAIMS, sub='u-ann')).encode()) + '.' + _u[2]


def req(method, path, body=None, token='admin', headers=None, base=None):
    """(status, headers dict (lower-case names), body bytes)."""
    h = dict(headers or {})
    if token:
        h['Authorization'] = 'Bearer ' + TOK.get(token, token)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    if data is not None:
        h.setdefault('Content-Type', 'application/json')
    r = urllib.request.Request((base or ADMIN) + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=10 * SLOW) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def state():
    st, _, b = req('GET', '/api/state')
    assert st == 200, (st, b[:200])
    return json.loads(b)


def jbody(b):
    try:
        return json.loads(b)
    except ValueError:
        return None


def metrics():
    txt = urllib.request.urlopen(BASE + '/metrics', timeout=10 * SLOW).read().decode()
    m, http = {}, {}
    for line in txt.splitlines():
        if line.startswith('#') or not line.strip():
            continue
        k, v = line.rsplit(' ', 1)
        hm = re.match(r'linkd_http_requests_total\{status="(\d+)"\}$', k)
        if hm:
            http[hm.group(1)] = int(v)
        else:
            m[k] = int(float(v))
    return m, http


def raw(data, timeout=5):
    """Sends bytes to the admin port, returns what comes back until the peer closes or goes quiet."""
    s = socket.create_connection((AHOST, int(APORT)), timeout=timeout * SLOW)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    out = b''
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
            if b'\r\n\r\n' in out:
                head, _, rest = out.partition(b'\r\n\r\n')
                m = re.search(rb'content-length: *(\d+)', head, re.I)
                if m and len(rest) >= int(m.group(1)):
                    break
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def status_of(resp):
    m = re.match(rb'HTTP/1\.1 (\d{3})', resp)
    return int(m.group(1)) if m else None


def quiet(ws_list):
    """Every client's messages that arrived before an echo round trip (each must be [] for 'got nothing')."""
    return [w.sync() for w in ws_list]


def log_has(pattern):
    with open(LOG, errors='replace') as f:
        return re.search(pattern, f.read(), re.M) is not None


# ---------------------------------------------------------------- auth
def section_auth():
    st, h, b = req('GET', '/api/state', token=None)
    j = jbody(b) or {}
    C.ok('no token: 401 with a JSON error and WWW-Authenticate: Bearer',
         st == 401 and j.get('error', {}).get('type') and h.get('www-authenticate', '').startswith('Bearer'), (st, h, b[:200]))
    st, _, b = req('GET', '/api/state', token='user')
    C.eq('a valid token without the admin role: 403', (st, (jbody(b) or {}).get('error', {}).get('type') is not None), (403, True))
    for k in ('forged', 'tampered', 'none', 'expired', 'notyet'):
        st, _, b = req('GET', '/api/state', token=k)
        C.eq('%s token carrying the admin role: 401' % k, st, 401)
    st, _, _ = req('GET', '/api/state', token='garbage')
    C.eq('a token that is not a JWT: 401', st, 401)
    st, _, _ = req('GET', '/api/state', token=None, headers={'Authorization': 'Basic ' + b64(b'admin:admin')})
    C.eq('Basic credentials: 401', st, 401)
    st, _, _ = req('GET', '/api/state', token='x' * 10000)
    C.eq('a 10 KB token: 401', st, 401)
    st, _, _ = req('GET', '/api/state?token=' + TOK['admin'], token=None)
    C.eq('the admin token in ?token= is not taken (tokens stay out of URLs): 401', st, 401)
    st, h, b = req('GET', '/api/state')
    C.ok('admin token: 200, JSON, no-store', st == 200 and h.get('content-type', '').startswith('application/json')
         and 'no-store' in h.get('cache-control', '') and isinstance(jbody(b), dict), (st, h))
    # the actions are guarded too, and refused ones do nothing
    for tok, want in ((None, 401), ('user', 403), ('forged', 401)):
        st, _, _ = req('POST', '/api/push', {'service': 'chat', 'all': True, 'event': 'refused'}, token=tok)
        C.eq('push with %s: %d' % (tok or 'no token', want), st, want)
        st, _, _ = req('POST', '/api/disconnect', {'connection': '0.1'}, token=tok)
        C.eq('disconnect with %s: %d' % (tok or 'no token', want), st, want)
    C.ok('refusals logged at warn (401 and 403)', wait_until(lambda: log_has(r'warn.*admin: refused .*127\.0\.0\.1') and
                                                             log_has(r"warn.*admin: refused user 'u-ann'.*no 'admin' role"), 3),
         'no "admin: refused" warn lines in the log')


# ---------------------------------------------------------------- figures
class Clients:
    pass


def connect():
    k = Clients()
    k.a = WS(WSBASE + '/ws/chat?token=' + TOK['user'])
    k.b = WS(WSBASE + '/ws/chat', headers=['Authorization: Bearer ' + TOK['user']])
    k.c = WS(WSBASE + '/ws/chat?token=' + TOK['bob'])
    k.d = WS(WSBASE + '/ws/chat')
    k.e = WS(WSBASE + '/ws/chat')
    k.o = WS(WSBASE + '/ws/other')
    k.chat = [k.a, k.b, k.c, k.d, k.e]
    k.all = k.chat + [k.o]
    k.id = {w: w.whoami() for w in k.all}
    for w in (k.a, k.b, k.c):
        r = w.call('do.join', {'room': 'lobby'})
        assert r and r['data'].get('ok'), r
    for w in (k.c, k.d):
        r = w.call('do.join', {'room': 'side'})
        assert r and r['data'].get('ok'), r
    return k


def compare_metrics(what):
    """The figures /api/state and /metrics share, read one right after the other."""
    s = state()
    m, mh = metrics()
    pairs = [('counts.ws', s['counts']['ws'], 'linkd_ws_connections'), ('counts.rooms', s['counts']['rooms'], 'linkd_rooms'),
             ('counts.memberships', s['counts']['memberships'], 'linkd_memberships'),
             ('counts.pending', s['counts']['pending'], 'linkd_pending_replies'), ('counts.ghosts', s['counts']['ghosts'], 'linkd_ws_ghosts'),
             ('counts.tls', s['counts']['tls'], 'linkd_tls_connections'), ('counts.services', s['counts']['services'], 'linkd_services'),
             ('counts.instances', s['counts']['instances'], 'linkd_service_instances'),
             ('totals.msgsIn', s['totals']['msgsIn'], 'linkd_ws_messages_in_total'),
             ('totals.msgsOut', s['totals']['msgsOut'], 'linkd_ws_messages_out_total'),
             ('totals.drops', s['totals']['drops'], 'linkd_ws_drops_total'),
             ('totals.wsAccepted', s['totals']['wsAccepted'], 'linkd_ws_accepted_total'),
             ('totals.historyBytes', s['totals']['historyBytes'], 'linkd_history_bytes')]
    bad = ['%s=%s vs %s=%s' % (a, v, n, m.get(n)) for a, v, n in pairs if m.get(n) != v]
    C.ok('%s: counts and totals equal /metrics' % what, not bad, '; '.join(bad))
    # /metrics counts the /api/state request just answered (one more 200), nothing else
    want = {k: v for k, v in s['http'].items()}
    want['200'] = want.get('200', 0) + 1
    C.eq('%s: HTTP status counts equal /metrics (plus the /api/state request)' % what, mh, want)
    C.eq('%s: totals.httpRequests is the sum of the status counts' % what, s['totals']['httpRequests'], sum(s['http'].values()))
    return s


def section_figures(k):
    for _ in range(3):
        req('GET', '/chat/hello', token=None, base=BASE)
    for _ in range(2):
        req('GET', '/no-such-route', token=None, base=BASE)
    req('GET', '/chat/admin-only', token=None, base=BASE)   # 401 from the route's auth
    s = compare_metrics('after the set-up')
    c = s['counts']
    C.eq('counts: 6 WebSocket connections, 2 rooms, 5 memberships, 3 services, 3 instances',
         [c['ws'], c['rooms'], c['memberships'], c['services'], c['instances']], [6, 2, 5, 3, 3])
    C.ok('HTTP statuses include the 200s, 404s, 401 and 101s of the set-up',
         s['http'].get('200', 0) >= 3 and s['http'].get('404', 0) >= 2 and s['http'].get('401', 0) >= 1 and s['http'].get('101', 0) >= 6, s['http'])
    C.eq('limits are the flags in force', s['limits'],
         {'maxConnections': 300, 'maxHttpConnections': 100, 'maxRooms': 500, 'maxMemberships': 2000, 'maxServices': 16,
          'maxMessageSize': 32768, 'maxOutbound': 524288, 'rateLimit': 1000, 'maxConnectionsPerUser': 4, 'historyMemory': 1048576})
    health = json.loads(urllib.request.urlopen(BASE + '/health', timeout=5).read())
    C.eq('version is /health\'s', s['version'], health['version'])
    C.ok('uptimeS is a small whole number', isinstance(s['uptimeS'], int) and 0 <= s['uptimeS'] < 3600, s['uptimeS'])
    try:
        with open('/proc/%s/status' % PID) as f:
            vm = int(re.search(r'VmRSS:\s+(\d+)', f.read()).group(1))
        C.ok('rssKiB near the process\'s VmRSS (%d KiB)' % vm, abs(s['rssKiB'] - vm) <= max(2048, vm // 4), (s['rssKiB'], vm))
    except OSError as e:
        C.ok('rssKiB near the process\'s VmRSS', False, e)
    sv = {x['name']: x for x in s['services']}
    C.eq('services: chat, other and plain', sorted(sv), ['chat', 'other', 'plain'])
    ch = sv.get('chat', {})
    C.eq('chat: version, path, connections, flags',
         [ch.get(k) for k in ('version', 'wsPath', 'connections', 'raw', 'recovery', 'live')], ['2.3.4', '/ws/chat', 5, False, False, 1])
    C.eq('chat: its routes with auth and roles', sorted(json.dumps(r, sort_keys=True) for r in ch.get('routes', [])),
         sorted(json.dumps(r, sort_keys=True) for r in [{'method': 'GET', 'path': '/chat/hello', 'auth': False, 'roles': []},
                                                        {'method': 'GET', 'path': '/chat/admin-only', 'auth': True, 'roles': ['ops']}]))
    inst = ch.get('instances') or [{}]
    C.ok('chat: one instance, ready, with the process\'s pid, uid, gid and a queue size',
         len(ch.get('instances', [])) == 1 and inst[0].get('id') == 'chat-1' and inst[0].get('state') == 'ready'
         and inst[0].get('pid') == int(CHAT_PID) and inst[0].get('uid') == os.getuid() and inst[0].get('gid') == os.getgid()
         and isinstance(inst[0].get('queueBytes'), int), inst)
    C.eq('other: 1 connection on /ws/other', [sv.get('other', {}).get('wsPath'), sv.get('other', {}).get('connections')], ['/ws/other', 1])
    C.eq('plain: no WebSocket path, one route', [sv.get('plain', {}).get('wsPath'), len(sv.get('plain', {}).get('routes', []))], ['', 1])
    C.eq('rooms: largest first, with members', [(r['service'], r['room'], r['members']) for r in s['rooms']],
         [('chat', 'lobby', 3), ('chat', 'side', 2)])
    C.eq('users: top users by connections (authenticated ones)', [(u['service'], u['user'], u['connections']) for u in s['users']],
         [('chat', 'u-ann', 2), ('chat', 'u-bob', 1)])
    conns = {x['id']: x for x in s['connections']}
    C.eq('connections: the six ids', sorted(conns), sorted(k.id.values()))
    now = time.time() * 1000
    exp = {k.a: ('chat', 'u-ann', 1), k.b: ('chat', 'u-ann', 1), k.c: ('chat', 'u-bob', 2), k.d: ('chat', '', 1), k.e: ('chat', '', 0),
           k.o: ('other', '', 0)}
    bad = []
    for w, (svc, user, rooms) in exp.items():
        x = conns.get(k.id[w], {})
        if (x.get('service'), x.get('user'), x.get('rooms')) != (svc, user, rooms) or not re.match(r'^127\.0\.0\.1:\d+$', x.get('remote', '')) \
                or x.get('tls') is not False or not (now - 300000 < x.get('connectedAt', 0) <= now + 1000):
            bad.append(x or k.id[w])
    C.ok('connections: service, user, rooms, remote address, connectedAt, tls of each', not bad, bad)


# ---------------------------------------------------------------- series
def section_series(k):
    def after(n):   # a state whose series has more than n samples
        return wait_until(lambda: (lambda s: s if len(s['series']['msgsIn']) > n else None)(state()), 5 * SLOW, 0.1)
    s = state()
    z = s['series']
    C.ok('series: intervalS 1, four arrays of one length (at most 300) of whole numbers',
         z.get('intervalS') == 1 and len({len(z[n]) for n in ('msgsIn', 'msgsOut', 'drops', 'http')}) == 1 and len(z['msgsIn']) <= 300
         and all(isinstance(v, int) and v >= 0 for n in ('msgsIn', 'msgsOut', 'drops', 'http') for v in z[n]), z)
    a = after(len(z['msgsIn']))        # a second closed since the clients went quiet: all of it is in samples
    C.ok('series: a new sample each second', a is not None, 'no new sample within 5 s')
    if a is None:
        return
    M = 37
    for i in range(M):
        r = k.a.call('echo', {'i': i})
        assert r and r.get('data') == {'i': i}, r
    s1 = state()
    b = after(len(s1['series']['msgsIn']))
    if b is None:
        C.ok('series: samples after the burst', False, 'no new sample')
        return
    n0 = len(a['series']['msgsIn'])
    new_in, new_out = b['series']['msgsIn'][n0:], b['series']['msgsOut'][n0:]
    C.eq('totals.msgsIn grew by the %d messages sent' % M, b['totals']['msgsIn'] - a['totals']['msgsIn'], M)
    C.eq('msgsIn: the per-second samples since then sum to the %d messages sent' % M, sum(new_in), M)
    C.eq('msgsOut: their samples sum to the %d replies' % M, sum(new_out), M)
    C.ok('msgsIn: the burst is a peak (one sample holds at least a third of it)', max(new_in) * 3 >= M, new_in)
    C.ok('http: the console\'s own polls show in the http series', sum(b['series']['http'][n0:]) >= 1, b['series']['http'][n0:])
    # b is the first state after a sample closed, and nothing happened since: the
    # samples hold every message and request since linkd started
    C.eq('series: at a sample boundary the samples sum to the totals (msgsIn, msgsOut, http; totals minus sum)',
         [b['totals'][t] - sum(b['series'][n]) for t, n in (('msgsIn', 'msgsIn'), ('msgsOut', 'msgsOut'), ('httpRequests', 'http'))], [0, 0, 0])


# ---------------------------------------------------------------- actions
def push(body, token='admin'):
    st, _, b = req('POST', '/api/push', body, token=token)
    return st, jbody(b)


def env_is(w, want):
    m = w.expect(lambda m: isinstance(m, dict) and 'type' in m, 5)
    return m == want, m


def section_actions(k):
    data = {'n': 1, 'text': 'héllo', 'list': [1, 2]}
    st, j = push({'service': 'chat', 'room': 'lobby', 'event': 'admin.test', 'data': data})
    C.eq('push to a room: 200 {"ok":true,"delivered":3}', (st, j), (200, {'ok': True, 'delivered': 3}))
    got = [env_is(w, {'type': 'admin.test', 'data': data}) for w in (k.a, k.b, k.c)]
    C.ok('push to a room: each member gets exactly {"type":"admin.test","data":...}', all(g[0] for g in got), [g[1] for g in got])
    extra = quiet(k.all)
    C.eq('push to a room: no one else gets it, no member twice', extra, [[]] * 6)

    st, j = push({'service': 'chat', 'connection': k.id[k.d], 'data': 'just you'})
    C.eq('push to a connection, no event named: delivered 1', (st, j), (200, {'ok': True, 'delivered': 1}))
    ok, m = env_is(k.d, {'type': 'admin.test', 'data': 'just you'})
    C.ok('push to a connection: it gets {"type":"admin.test","data":"just you"} (the default event)', ok, m)
    C.eq('push to a connection: no one else', quiet(k.all), [[]] * 6)

    st, j = push({'service': 'chat', 'all': True, 'event': 'admin.all'})
    C.eq('push to everyone on a service: delivered 5', (st, j), (200, {'ok': True, 'delivered': 5}))
    got = [env_is(w, {'type': 'admin.all', 'data': None}) for w in k.chat]
    C.ok('push to everyone: each chat client gets it once (data null when none given)', all(g[0] for g in got), [g[1] for g in got])
    C.eq('push to everyone: not the other service\'s client, no duplicates', quiet(k.all), [[]] * 6)

    C.eq('push to a room nobody is in: 200, delivered 0',
         push({'service': 'chat', 'room': 'empty-room', 'data': 1}), (200, {'ok': True, 'delivered': 0}))
    st, j = push({'service': 'chat', 'connection': k.id[k.o], 'data': 1})
    C.eq('push to another service\'s connection: 404', st, 404)
    C.eq('push to an unknown connection: 404', push({'service': 'chat', 'connection': '99999.1', 'data': 1})[0], 404)
    C.eq('push to an unknown service: 404', push({'service': 'nope', 'all': True})[0], 404)
    C.eq('push to a service without a WebSocket path: 404', push({'service': 'plain', 'all': True})[0], 404)
    st, j = push({'service': 'chat', 'data': 1})
    C.ok('push without a target: 400 with a JSON error', st == 400 and (j or {}).get('error', {}).get('message'), (st, j))
    C.eq('push with "all": false and no other target: 400', push({'service': 'chat', 'all': False})[0], 400)
    C.eq('push with an event that is not a string: 400', push({'service': 'chat', 'all': True, 'event': 5})[0], 400)
    C.eq('refused pushes reached no one', quiet(k.all), [[]] * 6)

    # strings arrive decoded: JSON escapes in event, room and reason are the characters they stand for
    r = k.d.call('do.join', {'room': 'qu"ote é'})
    assert r and r['data'].get('ok'), r
    st, j = push({'service': 'chat', 'room': 'qu"ote é', 'event': 'say "hi" é\\', 'data': 2})
    C.eq('push to a room named with a quote and non-ASCII (JSON-escaped in the body): delivered 1', (st, j), (200, {'ok': True, 'delivered': 1}))
    ok, m = env_is(k.d, {'type': 'say "hi" é\\', 'data': 2})
    C.ok('an event with a quote, a backslash and non-ASCII arrives as typed', ok, m)
    k.d.call('do.leave', {'room': 'qu"ote é'})
    long_room = 'R' * 127
    r = k.e.call('do.join', {'room': long_room})
    if r and r['data'].get('ok'):
        st, j = push({'service': 'chat', 'room': long_room + 'X', 'data': 3})
        C.ok('push to a room name longer than any room: not delivered to the room its first 127 bytes name',
             st >= 400 or (j or {}).get('delivered') == 0, (st, j))
        k.e.call('do.leave', {'room': long_room})
    st, j = push({'service': 'chat', 'connection': k.id[k.e], 'event': 'E' * 200, 'data': 4})
    C.ok('push with a 200-byte event: refused (400), not sent under a cut name', st == 400, (st, j))
    quiet(k.all)
    for w in k.all:
        w.inbox.clear()

    # disconnect
    e_id, d_id, b_id = k.id[k.e], k.id[k.d], k.id[k.b]
    st, _, b = req('POST', '/api/disconnect', {'connection': e_id, 'code': 4001, 'reason': 'bye now'})
    C.eq('disconnect: 200 {"ok":true}', (st, jbody(b)), (200, {'ok': True}))
    C.eq('disconnect: the client is closed with the given code and reason', k.e.wait_close(5 * SLOW), (4001, 'bye now'))
    ev = svc_event(SVC_OUT, 'DISCONNECTED', e_id, 5 * SLOW)
    C.ok('disconnect: the service hears DISCONNECTED for it', ev is not None, 'no DISCONNECTED event for %s' % e_id)
    st, _, b = req('POST', '/api/disconnect', {'connection': d_id})
    C.eq('disconnect without code and reason: 200', st, 200)
    C.eq('disconnect without code and reason: closed 4000 "closed by the administrator"', k.d.wait_close(5 * SLOW), (4000, 'closed by the administrator'))
    st, _, b = req('POST', '/api/disconnect', {'connection': b_id, 'code': 4002, 'reason': 'a "quoted" é'})
    C.eq('disconnect with a quote and non-ASCII in the reason: they arrive as sent', k.b.wait_close(5 * SLOW), (4002, 'a "quoted" é'))
    C.eq('disconnect an unknown id: 404', req('POST', '/api/disconnect', {'connection': '99999.1'})[0], 404)
    C.eq('disconnect an id just closed: 404', wait_until(lambda: req('POST', '/api/disconnect', {'connection': e_id})[0] == 404, 3 * SLOW), True)
    C.eq('disconnect with no connection named: 404', req('POST', '/api/disconnect', {'code': 4000})[0], 404)
    bad = [(c, req('POST', '/api/disconnect', {'connection': k.id[k.a], 'code': c})[0]) for c in (999, 1005, 1006, 1015, 5000, -1)]
    C.eq('disconnect with a close code not allowed on the wire: 400 (1005, 1006, 1015, <1000, >4999)', bad,
         [(c, 400) for c in (999, 1005, 1006, 1015, 5000, -1)])
    C.eq("disconnect with a reason over 123 bytes (a close frame's room): 400",
         req('POST', '/api/disconnect', {'connection': k.id[k.a], 'code': 4000, 'reason': 'r' * 124})[0], 400)
    C.eq('disconnect with a reason that is not a string: 400', req('POST', '/api/disconnect', {'connection': k.id[k.a], 'reason': 5})[0], 400)
    try:
        alive = k.a.sync() is not None
    except Exception as x:   # noqa: BLE001
        alive = x
    C.eq('refused disconnects left the connection open', alive, True)
    s = compare_metrics('after the disconnects')
    C.eq('after the disconnects: 3 connections, lobby 2, side 1', [s['counts']['ws'], [(r['room'], r['members']) for r in s['rooms']]],
         [3, [('lobby', 2), ('side', 1)]])
    C.ok('logged at info: the pushes (who, event, target, service, outcome)',
         log_has(r"info.*admin \(user 'u-root' from 127\.0\.0\.1:\d+\): push 'admin\.test' to room 'lobby' of service 'chat': ok, delivered to 3")
         and log_has(r"info.*admin \(user 'u-root'.*push 'admin\.all' to everyone .*service 'chat'.*delivered to 5"), 'lines not found')
    C.ok('logged at info: the disconnects (who, id, code, reason)',
         log_has(r"info.*admin \(user 'u-root' from 127\.0\.0\.1:\d+\): disconnect %s with 4001 \(bye now\)" % re.escape(e_id)), 'line not found')


# ---------------------------------------------------------------- hostile input on the admin port
def section_hostile(k):
    bodies = [b'', b'{', b'[]', b'"x"', b'null', b'42', b'{"service":', b'{"service":"chat","room":"lobby","data":}',
              b'{"service":"chat","room":"lobby"}}', b'\xff\xfe{}', b'{"service":"chat","room":"lobby","data":{"a":' * 50]
    got = [(b[:20], req('POST', '/api/push', b)[0]) for b in bodies]
    C.eq('push with a body that is not a JSON object: 400 each', [g[1] for g in got], [400] * len(bodies))
    got = [req('POST', '/api/disconnect', b)[0] for b in bodies[:6]]
    C.eq('disconnect with a body that is not a JSON object: 400 each', got, [400] * 6)
    C.eq('bad bodies reached no one', quiet([k.a, k.c, k.o]), [[]] * 3)
    big = 2 * 1024 * 1024
    hd = ('POST /api/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n'
          'Content-Length: %d\r\n\r\n' % (TOK['admin'], big)).encode()
    C.eq('a 2 MiB body (over --max-body-size): 413', status_of(raw(hd + b'{"data":"' + b'x' * 65536)), 413)
    C.eq('a 2 MiB chunked body: 413', status_of(raw(hd.replace(b'Content-Length: %d' % big, b'Transfer-Encoding: chunked') +
                                                 (b'10000\r\n' + b'x' * 0x10000 + b'\r\n') * 33)), 413)
    C.eq('a header block over --max-header-size: 431', status_of(raw(b'GET /api/state HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 70000 + b'\r\n\r\n')), 431)
    C.eq('garbage instead of HTTP: 400', status_of(raw(b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + b'\x00' * 64 + b'\r\n\r\n')), 400)
    for p in ('/api', '/api/', '/api/state/', '/api/statex', '/api/push/x', '/admin', '/favicon.ico', '/index.htm', '/%2e%2e/api/state',
              '/health', '/metrics', '/chat/hello', '/ws/chat'):
        st, _, b = req('GET', p)
        C.eq('admin port: GET %s is 404 (only the page and /api/*; not /health, /metrics, routes)' % p, (st, bool((jbody(b) or {}).get('error'))), (404, True))
    for m, p, allow in (('POST', '/', 'GET'), ('DELETE', '/', 'GET'), ('PUT', '/api/state', 'GET'), ('POST', '/api/state', 'GET'),
                        ('GET', '/api/push', 'POST'), ('PUT', '/api/push', 'POST'), ('GET', '/api/disconnect', 'POST'),
                        ('OPTIONS', '/api/state', 'GET')):
        st, h, _ = req(m, p, b'{}' if m in ('POST', 'PUT') else None)
        C.ok('admin port: %s %s is 405 with Allow: %s' % (m, p, allow), st == 405 and allow in h.get('allow', ''), (st, h.get('allow')))
    up = 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'
    for p, want in (('/ws/chat', 404), ('/', 200), ('/api/state', 200)):
        r = raw(('GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n' % (p, TOK['admin'], up)).encode())
        C.eq('admin port: a WebSocket upgrade on %s is not upgraded (%d)' % (p, want), status_of(r), want)
    st, _, _ = req('GET', '/api/state', token='admin', base=BASE)
    C.eq('client port: /api/state is not served there (404)', st, 404)
    st, _, _ = req('POST', '/api/push', {'service': 'chat', 'all': True}, base=BASE)
    C.eq('client port: /api/push is not served there (404)', st, 404)
    # pipelined: two state requests and a push in one write, answered in order
    pl = ''.join('%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s\r\n%s' % (
        m, p, TOK['admin'], 'Content-Type: application/json\r\nContent-Length: %d\r\n' % len(bd) if bd else '', bd)
        for m, p, bd in (('GET', '/api/state', ''), ('POST', '/api/push', '{"service":"chat","room":"side","event":"pl","data":1}'),
                         ('GET', '/nope', '')))
    s = socket.create_connection((AHOST, int(APORT)), timeout=5 * SLOW)
    s.sendall(pl.encode())
    buf = b''
    end = time.monotonic() + 5 * SLOW
    while buf.count(b'HTTP/1.1 ') < 3 or not buf.rstrip().endswith(b'}'):
        if time.monotonic() > end:
            break
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
    s.close()
    C.eq('pipelined requests on the admin port: answered in order', re.findall(rb'HTTP/1\.1 (\d{3})', buf), [b'200', b'200', b'404'])
    ok, m = env_is(k.c, {'type': 'pl', 'data': 1})
    C.ok('the pipelined push arrived', ok, m)
    st, _, _ = req('GET', '/api/state')
    C.eq('the admin port still answers after the hostile input', st, 200)


# ---------------------------------------------------------------- the newest connections
def section_newest(k):
    """connections[] is the newest 20, by when they connected: one that took a slot freed
    early in the table (the free list hands those out first) is among them."""
    more = [WS(WSBASE + '/ws/chat') for _ in range(30)]
    ids = [w.whoami() for w in more]
    first = state()['connections']
    C.eq('connections: 20 listed when there are more', len(first), 20)
    for w in more[:5]:
        w.close()
    for i in ids[:5]:   # (the service's events, not /api/state: an HTTP request would take a slot)
        svc_event(SVC_OUT, 'DISCONNECTED', i, 5 * SLOW)
    time.sleep(0.002)   # a later connectedAt (ms)
    late = WS(WSBASE + '/ws/chat')
    late_id = late.whoami()
    lst = state()['connections']
    C.ok('connections: a connection that just came is listed first, whatever its slot',
         lst and lst[0]['id'] == late_id, 'new %s; listed %s' % (late_id, [x['id'] for x in lst[:5]]))
    at = [x['connectedAt'] for x in lst]
    C.ok('connections: newest first (connectedAt descending)', at == sorted(at, reverse=True), at)
    for w in more[5:] + [late]:
        w.close()


def main():
    C.run('auth', section_auth)
    k = None
    try:
        k = connect()
    except Exception as e:   # noqa: BLE001
        C.ok('clients connect and join rooms', False, e)
        return
    C.run('figures', lambda: section_figures(k))
    C.run('series', lambda: section_series(k))
    C.run('actions', lambda: section_actions(k))
    C.run('hostile input', lambda: section_hostile(k))
    C.run('newest connections', lambda: section_newest(k))
    for w in k.all:
        w.close()


if __name__ == '__main__':
    main()
