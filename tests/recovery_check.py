#!/usr/bin/python3
"""Connection recovery checks (issue 10) against a running linkd whose test
service registered its WebSocket path with --recovery WINDOW_MS:HISTORY.

  recovery_check.py CASE BASE_URL WS_URL SVC_OUT [args]

Clients use ws_client.WS; pushes go through the test service's puppet
commands (do.emit from another client). Prints PASS:/FAIL: lines.
"""
import base64, hashlib, hmac, json, os, sys, time
sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.dirname(os.path.abspath(__file__))))
from ws_client import WS, Checks, metric, wait_until, svc_event  # noqa: E402

C = Checks('t_recovery')


def session(w):
    m = w.expect(lambda m: isinstance(m, dict) and m.get('type') == 'linkd.session')
    return m['data'] if m else None


def emit(b, room, n0, n1, event='m'):
    for i in range(n0, n1):
        r = b.call('do.emit', {'room': room, 'event': event, 'data': i})
        assert r and r.get('data', {}).get('ok'), r


def resume(w, token, rooms):
    w.send('linkd.resume', {'token': token, 'rooms': rooms})
    got = []
    while True:
        m = w.expect(lambda m: isinstance(m, dict) and 'type' in m, timeout=5)
        if m is None:
            return got, None
        if m['type'] == 'linkd.recovered':
            return got, m['data']
        got.append(m)


def joined(url, room, headers=None):
    w = WS(url, headers=headers)
    s = session(w)
    r = w.call('do.join', {'room': room})
    assert r and r['data'].get('ok'), r
    return w, s


def case_within(base, url, svc_out):
    """Drop within the window: every missed push, in order, no duplicates."""
    a, s = joined(url, 'r1')
    C.ok('within: linkd.session gives a token, the epoch, the window and the history',
         s and s.get('token') and s.get('epoch') and s.get('windowMs') == 4000 and s.get('history') == 50, s)
    a.call('do.join', {'room': 'r2'})
    old = a.whoami()
    b = WS(url)
    session(b)
    emit(b, 'r1', 0, 3)
    seen = [a.expect(lambda m: m.get('type') == 'm') for _ in range(3)]
    C.ok('within: room pushes carry room and seq', [(m['room'], m['seq'], m['data']) for m in seen] == [('r1', 1, 0), ('r1', 2, 1), ('r1', 3, 2)], seen)
    a.abort()
    wait_until(lambda: metric(base, 'linkd_ws_ghosts') == 1, 5)
    C.ok('within: the dropped connection is kept (linkd_ws_ghosts 1)', metric(base, 'linkd_ws_ghosts') == 1, metric(base, 'linkd_ws_ghosts'))
    ev = svc_event(svc_out, 'DISCONNECTED', old)
    C.ok('within: the service is told DISCONNECTED, rooms listed', ev and sorted(ev['rooms']) == ['r1', 'r2'], ev)
    # 20 pushes interleaved over two rooms, one to the old connection alone
    for i in range(3, 23):
        b.call('do.emit', {'room': 'r1' if i % 3 else 'r2', 'event': 'm', 'data': i})
    b.call('do.send', {'to': old, 'event': 'direct', 'data': 'lost'})
    a2 = WS(url)
    session(a2)
    got, res = resume(a2, s['token'], {'r1': 3})
    C.ok('within: recovered:true, missed 20', res == {'recovered': True, 'missed': 20}, res)
    C.ok('within: the 20 missed pushes, in push order across rooms, no duplicates', [m['data'] for m in got] == list(range(3, 23)), [m.get('data') for m in got])
    C.ok('within: seq per room consecutive', [m['seq'] for m in got if m['room'] == 'r2'] == list(range(1, 8)) and
         [m['seq'] for m in got if m['room'] == 'r1'] == list(range(4, 17)), [(m['room'], m['seq']) for m in got])
    C.ok('within: a push to the old connection alone is not replayed', not any(m.get('type') == 'direct' for m in got), got)
    ev = svc_event(svc_out, 'RESUMED')
    new = a2.whoami()
    C.ok('within: the service is told RESUMED (new id, previous id, rooms)',
         ev and ev['conn'] == new and ev['previous'] == old and sorted(ev['rooms']) == ['r1', 'r2'], ev)
    b.call('do.emit', {'room': 'r2', 'event': 'm', 'data': 99})
    m = a2.expect(lambda m: m.get('type') == 'm')
    C.ok('within: the rooms are back: the next push arrives live', m and m['data'] == 99 and m['seq'] == 8, m)
    C.ok('within: no ghost left, resumed counted', wait_until(lambda: metric(base, 'linkd_ws_ghosts') == 0, 3) and metric(base, 'linkd_ws_resumed_total') >= 1,
         (metric(base, 'linkd_ws_ghosts'), metric(base, 'linkd_ws_resumed_total')))
    a3 = WS(url)
    session(a3)
    _, res = resume(a3, s['token'], {})
    C.ok('within: the same token a second time: recovered:false', res and res['recovered'] is False, res)
    # a live (half-open) old connection is taken over too
    s2 = None
    for w in (a3,):
        w.close()
    c1, s2 = joined(url, 'r3')
    emit(b, 'r3', 0, 2)
    c1.expect(lambda m: m.get('type') == 'm')
    c1.expect(lambda m: m.get('type') == 'm')
    c2 = WS(url)
    session(c2)
    emit(b, 'r3', 2, 4)
    got, res = resume(c2, s2['token'], {'r3': 2})
    C.ok('within: a client back before linkd noticed the drop takes the live connection over', res == {'recovered': True, 'missed': 0} or
         (res and res.get('recovered') and [m['data'] for m in got] == [2, 3]), (res, got))
    code = c1.wait_close(3)
    C.ok('within: ... and the old connection is closed', code is not None, code)
    for w in (a2, b, c2):
        w.close()


def case_history(base, url, svc_out):
    """A gap longer than the history (50): recovered:false, no rooms back."""
    a, s = joined(url, 'h1')
    b = WS(url)
    session(b)
    a.abort()
    emit(b, 'h1', 0, 60)
    a2 = WS(url)
    session(a2)
    got, res = resume(a2, s['token'], {})
    C.ok('history: 60 missed with a history of 50: recovered:false, nothing replayed', res and res['recovered'] is False and not got, (res, got))
    C.ok('history: the reason names the history', res and 'history' in res.get('reason', ''), res)
    b.call('do.emit', {'room': 'h1', 'event': 'm', 'data': 'after'})
    C.ok('history: no rooms restored (the next push to the room does not come)', a2.expect(lambda m: m.get('type') == 'm', 1) is None)
    C.ok('history: the ghost is gone', wait_until(lambda: metric(base, 'linkd_ws_ghosts') == 0, 3), metric(base, 'linkd_ws_ghosts'))
    a2.close()
    b.close()


def case_window(base, url, svc_out):
    """Back after the window (4 s): recovered:false."""
    a, s = joined(url, 'w1')
    a.abort()
    wait_until(lambda: metric(base, 'linkd_ws_ghosts') == 1, 5)
    C.ok('window: the ghost ends with the window (4 s)', wait_until(lambda: metric(base, 'linkd_ws_ghosts') == 0, 8), metric(base, 'linkd_ws_ghosts'))
    C.ok('window: its memberships are gone', metric(base, 'linkd_memberships') == 0, metric(base, 'linkd_memberships'))
    a2 = WS(url)
    session(a2)
    _, res = resume(a2, s['token'], {})
    C.ok('window: recovered:false after the window', res and res['recovered'] is False and 'window' in res.get('reason', ''), res)
    a2.close()


def case_forged(base, url, svc_out):
    a, s = joined(url, 'f1')
    a.abort()
    tok = s['token']
    raw = bytearray(base64.urlsafe_b64decode(tok + '=' * (-len(tok) % 4)))
    bad = []
    for i in (8, 12, 20):   # the slot, the generation, the signature
        r = bytearray(raw)
        r[i] ^= 1
        bad.append(base64.urlsafe_b64encode(bytes(r)).decode().rstrip('='))
    bad += ['x' * 43, tok[:-2], '']
    labels = ['slot changed', 'generation changed', 'signature changed', 'garbage', 'cut short', 'empty']
    for label, t in zip(labels, bad):
        w = WS(url)
        session(w)
        got, res = resume(w, t, {'f1': 0})
        C.ok('forged: token with its %s: recovered:false' % label, res and res['recovered'] is False and not got, res)
        w.close()
    w = WS(url)
    session(w)
    _, res = resume(w, tok, {})
    C.ok('forged: the real token still recovers afterwards', res and res['recovered'] is True, res)
    w.close()


def case_user(base, url, svc_out, secret):
    def jwt(sub):
        h = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b'=')
        p = base64.urlsafe_b64encode(json.dumps({'sub': sub, 'exp': int(time.time()) + 600}).encode()).rstrip(b'=')
        sig = base64.urlsafe_b64encode(hmac.new(secret.encode(), h + b'.' + p, hashlib.sha256).digest()).rstrip(b'=')
        return (h + b'.' + p + b'.' + sig).decode()
    a, s = joined(url, 'u1', ['Authorization: Bearer ' + jwt('alice')])
    a.abort()
    for label, hdr in (('another user', ['Authorization: Bearer ' + jwt('mallory')]), ('no user', None)):
        w = WS(url, headers=hdr)
        session(w)
        _, res = resume(w, s['token'], {})
        C.ok("user: alice's token used by %s: recovered:false" % label, res and res['recovered'] is False and 'user' in res.get('reason', ''), res)
        w.close()
    w = WS(url, headers=['Authorization: Bearer ' + jwt('alice')])
    session(w)
    _, res = resume(w, s['token'], {})
    C.ok('user: alice herself still recovers (a refused attempt does not end it)', res and res['recovered'] is True, res)
    w.close()


def case_flood(base, url, svc_out, cap=None):
    """A room flooded far past its history: the memory stays bounded (by
    the history, or by --history-memory when it is smaller)."""
    a, s = joined(url, 'big')
    b = WS(url)
    session(b)
    blob = 'x' * 2000
    for i in range(300):
        b.send('do.emit', {'room': 'big', 'event': 'm', 'data': blob})
    b.call('echo', 1, timeout=20)
    hb = metric(base, 'linkd_history_bytes')
    limit = int(cap) if cap else 50 * 2100
    C.ok('flood: 300 pushes of 2 KB, history 50%s: linkd_history_bytes %s <= %d' % (', --history-memory %s' % cap if cap else '', hb, limit),
         hb is not None and 0 < hb <= limit, hb)
    a.close()
    b.close()


def case_restart_token(base, url, svc_out, path):
    """Save a token (the shell restarts linkd, then case_restart_resume)."""
    a, s = joined(url, 'e1')
    with open(path, 'w') as f:
        json.dump(s, f)
    a.abort()


def case_restart_resume(base, url, svc_out, path):
    s = json.load(open(path))
    w = WS(url)
    s2 = session(w)
    C.ok('restart: a new epoch after linkd restarts', s2 and s2['epoch'] != s['epoch'], (s, s2))
    _, res = resume(w, s['token'], {'e1': 0})
    C.ok('restart: a token from before the restart: recovered:false (new epoch)', res and res['recovered'] is False and 'restart' in res.get('reason', ''), res)
    w.close()


def case_plain(base, url, svc_out):
    """A path without recovery: no linkd.session, linkd.resume goes to the service."""
    w = WS(url)
    r = w.call('echo', 1)
    C.ok('plain path: no linkd.session message', r and not w.inbox, w.inbox)
    w.send('linkd.resume', {'token': 'x'}, id='lr')
    r = w.reply('lr')
    C.ok('plain path: linkd.resume is an ordinary message for the service', r and r.get('data') == {'unknown': 'linkd.resume'}, r)
    w.close()


if __name__ == '__main__':
    case, base, url, svc_out = sys.argv[1:5]
    extra = sys.argv[5:]
    fn = globals()['case_' + case]
    try:
        fn(base, url, svc_out, *extra)
    except Exception as e:
        C.ok('%s: ran to the end' % case, False, '%s: %s' % (type(e).__name__, e))
    sys.exit(0)
