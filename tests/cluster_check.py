#!/usr/bin/python3
"""Cluster checks for tests/t_cluster.sh (linkd --nats-url, issue 13).

    cluster_check.py PHASE STATE.json

STATE.json (written by t_cluster.sh) names the nodes that run:
  {"nats": {"port": P, "pidfile": F, "cmd": [...], "log": F},
   "nodes": {"a": {"id": "node-a", "url": "http://127.0.0.1:PORT", "pid": N,
                   "svc_out": F}, ...}}
Every node runs its own tests/svc.py instance of the service "chat" on
/ws/chat (puppet commands: a client's do.emit / do.send / ... is carried out
by the service of the node it is connected to).

Phases:
  two    nodes a, b: pushes to a room and to everyone across nodes (exactly
         once), except lists across nodes, a connection send across nodes and
         its result (NOT_FOUND for a gone connection and for an unknown node),
         rooms query and close of a remote connection, join/leave of a remote
         connection refused, room interest (linkd_cluster_subscriptions).
  three  nodes a, b, c: room counts across 3 nodes, a push from b's service
         and an except list naming connections of two other nodes; then NATS
         killed and restarted under traffic; then node c killed (SIGKILL).
  solo   node solo, alone on its own NATS: room counts answered at once.
  quiet  node solo and node quiet (no service): a room count is whole at once.
  alone  node s started without --nats-url: ids without '@', /health without
         a node, cluster metrics at zero.
Prints PASS:/FAIL: lines (ws_client.Checks).
"""
import json, os, signal, subprocess, sys, threading, time, urllib.request

sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.dirname(os.path.abspath(__file__))))
from ws_client import WS, Checks, Closed, metric, wait_until  # noqa: E402

PHASE, STATE = sys.argv[1], json.load(open(sys.argv[2]))
NODES = STATE.get('nodes', {})
SLOW = float(os.environ.get('T_SLOW', '1'))   # longer waits under valgrind/qemu
c = Checks('t_cluster')


def ws_url(n):
    return NODES[n]['url'].replace('http://', 'ws://') + '/ws/chat'


def M(n, name):
    try:
        return metric(NODES[n]['url'], name)
    except Exception:
        return None


def health(n):
    try:
        return json.loads(urllib.request.urlopen(NODES[n]['url'] + '/health', timeout=5).read())
    except Exception as e:
        return {'error': str(e)}


def is_ev(ev, **kw):
    def p(m):
        if not (isinstance(m, dict) and m.get('type') == ev):
            return False
        return all(m.get('data', {}).get(k) == v for k, v in kw.items()) if kw else True
    return p


def drain(ws, secs=0.3):
    """Reads whatever arrives for secs seconds into the inbox."""
    end = time.monotonic() + secs
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            m = ws._read_one(left)
            if m is None:
                return
            if isinstance(m, tuple) and m[0] in ('pong', 'ping'):
                continue
            ws.inbox.append(m)
    except Closed:
        return


def take(ws, pred):
    got = [m for m in ws.inbox if pred(m)]
    ws.inbox = [m for m in ws.inbox if not pred(m)]
    return got


def deliveries(clients, pred, expect_in, settle=0.4):
    """{name: number of matching messages} once every client named in
    expect_in has one (or 5 s passed) and a further settle window is over
    (a second copy would have come by then)."""
    for name in expect_in:
        m = clients[name].expect(pred, timeout=5 * SLOW)
        if m is not None:
            clients[name].inbox.insert(0, m)
    time.sleep(settle * SLOW)
    for w in clients.values():
        drain(w, 0.05)
    return {name: len(take(w, pred)) for name, w in clients.items()}


def call(w, type_, data=None, timeout=None):
    r = w.call(type_, data, timeout=timeout or 5 * SLOW)
    return r.get('data') if r else None


def err_type(d):
    return (d or {}).get('error', {}).get('type') if isinstance(d, dict) else None


def connect(node, n):
    out = []
    for _ in range(n):
        w = WS(ws_url(node), timeout=5 * SLOW)
        out.append((w, w.whoami()))
    return out


def wait_metric(node, name, pred, timeout):
    return wait_until(lambda: pred(M(node, name)), timeout * SLOW, 0.1) and True


# ------------------------------------------------------------------ phase two
def phase_two():
    for n in ('a', 'b'):
        h = wait_until(lambda: health(n).get('cluster') == 'connected' and health(n), 10 * SLOW, 0.1)
        c.ok('/health of %s names the node and says connected' % n,
             h and h.get('node') == NODES[n]['id'] and h.get('cluster') == 'connected', health(n))
    c.ok('each node hears the other (linkd_cluster_nodes 1 on a and b)',
         wait_metric('a', 'linkd_cluster_nodes', lambda v: v == 1, 6) and wait_metric('b', 'linkd_cluster_nodes', lambda v: v == 1, 6),
         'a: %s, b: %s' % (M('a', 'linkd_cluster_nodes'), M('b', 'linkd_cluster_nodes')))

    (a1, a1i), (a2, a2i) = connect('a', 2)
    (b1, b1i), (b2, b2i) = connect('b', 2)
    ids = {'a1': a1i, 'a2': a2i, 'b1': b1i, 'b2': b2i}
    c.ok('connection ids name their node (slot.gen@node)',
         all(v and v.endswith('@' + NODES[k[0]]['id']) for k, v in ids.items()), ids)
    cl = {'a1': a1, 'a2': a2, 'b1': b1, 'b2': b2}

    # --- interest: B subscribes to a room's subject while it has members there
    s0 = M('b', 'linkd_cluster_subscriptions')
    c.ok('linkd_cluster_subscriptions counts the inbox, hellos and the path (>= 4)', s0 is not None and s0 >= 4, s0)
    steps = []
    def step(w, op, room, want):
        call(w, op, {'room': room})
        v = wait_until(lambda: M('b', 'linkd_cluster_subscriptions') == s0 + want and s0 + want, 3 * SLOW, 0.05)
        steps.append('%s %s: %s (want %s)' % (op, room, M('b', 'linkd_cluster_subscriptions'), s0 + want))
        return bool(v) or s0 + want == 0
    ok = [step(b1, 'do.join', 'int1', 1), step(b2, 'do.join', 'int1', 1), step(b2, 'do.join', 'int2', 2)]
    c.ok('interest: a room subject is subscribed on its first member here, once (+1, +0, +1)', all(ok), steps)
    ok = [step(b2, 'do.leave', 'int2', 1), step(b1, 'do.leave', 'int1', 1), step(b2, 'do.leave', 'int1', 0)]
    c.ok('interest: dropped when the last member leaves (-1, -0, -1)', all(ok), steps[3:])
    # a room's subscription costs no thread (libnats' default: one per subscription)
    def threads(n):
        try:
            return len(os.listdir('/proc/%d/task' % NODES[n]['pid']))
        except OSError:
            return None
    t0 = threads('b')
    for i in range(40):
        b1.send('do.join', {'room': 'thr%d' % i})
    wait_until(lambda: M('b', 'linkd_cluster_subscriptions') == s0 + 40, 5 * SLOW, 0.05)
    t1, s1 = threads('b'), M('b', 'linkd_cluster_subscriptions')
    for i in range(40):
        b1.send('do.leave', {'room': 'thr%d' % i})
    wait_until(lambda: M('b', 'linkd_cluster_subscriptions') == s0, 5 * SLOW, 0.05)
    c.ok('40 rooms subscribed on b (%s subscriptions): no thread per subscription (threads %s -> %s)' % (s1, t0, t1),
         s1 == s0 + 40 and t0 is not None and t1 is not None and t1 - t0 <= 2, '')
    b3 = WS(ws_url('b'))
    b3.whoami()
    call(b3, 'do.join', {'room': 'int3'})
    up = wait_metric('b', 'linkd_cluster_subscriptions', lambda v: v == s0 + 1, 3)
    b3.close()
    c.ok('interest: dropped when the last member disconnects',
         up and wait_metric('b', 'linkd_cluster_subscriptions', lambda v: v == s0, 3), M('b', 'linkd_cluster_subscriptions'))

    # --- two rooms whose names hash alike share one subject: one subscription,
    # handed over when its holder goes, and a push reaches its own room once
    X, Y = 'room-112789', 'room-349192'   # FNV-1a 0x4a67660b both
    call(b1, 'do.join', {'room': X})
    call(b2, 'do.join', {'room': Y})
    shared = wait_metric('b', 'linkd_cluster_subscriptions', lambda v: v == s0 + 1, 3)
    c.ok('rooms %s and %s (one subject): one subscription on b' % (X, Y), shared, M('b', 'linkd_cluster_subscriptions'))
    call(a1, 'do.emit', {'room': X, 'event': 'hx', 'data': 1})
    got = deliveries(cl, is_ev('hx'), ['b1'])
    c.eq('a push to %s from a: its member on b has it once, the other room nothing' % X, got, {'a1': 0, 'a2': 0, 'b1': 1, 'b2': 0})
    call(b1, 'do.leave', {'room': X})
    kept = wait_metric('b', 'linkd_cluster_subscriptions', lambda v: v == s0 + 1, 3)
    call(a1, 'do.emit', {'room': Y, 'event': 'hy', 'data': 2})
    got = deliveries(cl, is_ev('hy'), ['b2'])
    c.ok('the subject stays subscribed for %s when %s empties, and its push arrives once' % (Y, X),
         kept and got == {'a1': 0, 'a2': 0, 'b1': 0, 'b2': 1}, (M('b', 'linkd_cluster_subscriptions'), got))
    call(b2, 'do.leave', {'room': Y})
    c.ok('the shared subscription goes with the last of the two rooms',
         wait_metric('b', 'linkd_cluster_subscriptions', lambda v: v == s0, 3), M('b', 'linkd_cluster_subscriptions'))

    for w in cl.values():
        r = call(w, 'do.join', {'room': 'r1'})
        if r != {'ok': True}:
            c.ok('join r1', False, r)

    # --- a push from A's service to the room reaches every member on every node, once
    p0a, r0b = M('a', 'linkd_cluster_published_total'), M('b', 'linkd_cluster_received_total')
    r = call(a1, 'do.emit', {'room': 'r1', 'event': 'e1', 'data': {'k': 1}})
    c.eq("a push from a's service to the room: the service's result", r, {'ok': True})
    got = deliveries(cl, is_ev('e1'), cl)
    c.eq('the push reaches the members on both nodes exactly once', got, {'a1': 1, 'a2': 1, 'b1': 1, 'b2': 1})
    # ten more: one NATS message each (B's count also holds a's hellos: one a second)
    t0 = time.monotonic()
    for i in range(10):
        a1.send('do.emit', {'room': 'r1', 'event': 'e10', 'data': {'i': i}})
    got = deliveries(cl, is_ev('e10'), ['b1', 'b2'])
    dt = time.monotonic() - t0
    c.eq('ten pushes: ten copies at each member on both nodes', got, {'a1': 10, 'a2': 10, 'b1': 10, 'b2': 10})
    dp = M('a', 'linkd_cluster_published_total') - p0a
    dr = M('b', 'linkd_cluster_received_total') - r0b
    hellos = int(dt + 3) + 2
    c.ok('one NATS message per push, not per member: 11 pushes to 4 members -> a published %d, b received %d (hellos: ~1/s)' % (dp, dr),
         11 <= dp <= 11 + hellos and 11 <= dr <= 11 + hellos, 'elapsed %.1f s' % dt)

    # --- except list across nodes
    r = call(a1, 'do.emit', {'room': 'r1', 'event': 'ex', 'data': 1, 'except': [b1i, a2i]})
    got = deliveries(cl, is_ev('ex'), ['a1', 'b2'])
    c.eq("except [b1 (on b), a2 (on a)] from a's service: b1 and a2 skipped, the others get it once",
         got, {'a1': 1, 'a2': 0, 'b1': 0, 'b2': 1})
    call(b1, 'do.emit', {'room': 'r1', 'event': 'ex2', 'data': 2, 'except': [a1i, a2i, b2i]})
    got = deliveries(cl, is_ev('ex2'), ['b1'])
    c.eq("except of every other member (both nodes) from b's service: only b1", got, {'a1': 0, 'a2': 0, 'b1': 1, 'b2': 0})

    # --- broadcast to everyone on the path, across nodes
    call(a2, 'do.all', {'event': 'all1', 'data': {'x': 1}})
    got = deliveries(cl, is_ev('all1'), cl)
    c.eq("broadcast-all from a's service reaches every connection on both nodes once", got, {'a1': 1, 'a2': 1, 'b1': 1, 'b2': 1})
    call(a2, 'do.all', {'event': 'all2', 'data': {'x': 2}, 'except': [b2i, a1i]})
    got = deliveries(cl, is_ev('all2'), ['a2', 'b1'])
    c.eq('broadcast-all with except [b2, a1] across nodes', got, {'a1': 0, 'a2': 1, 'b1': 1, 'b2': 0})

    # --- a connection send from A's service to a connection on B
    r = call(a1, 'do.send', {'to': b1i, 'event': 'dm', 'data': {'hi': 1}})
    c.eq("a send from a's service to a connection on b: ok once b has delivered it", r, {'ok': True})
    got = deliveries(cl, is_ev('dm'), ['b1'])
    c.eq('the send reaches that connection only, once', got, {'a1': 0, 'a2': 0, 'b1': 1, 'b2': 0})
    res = [json.loads(l[7:]) for l in open(NODES['a']['svc_out']) if l.startswith('RESULT ')]
    # svc.py prints the RESULT before it replies to the client: the send's is the last one
    c.ok("a's service got delivered=1 in the CommandResult of the remote send",
         bool(res) and res[-1].get('ok') and res[-1].get('delivered') == 1, res[-1:])
    gone = WS(ws_url('b'))
    gone_id = gone.whoami()
    gone.close()
    wait_until(lambda: M('b', 'linkd_ws_connections') == 2, 3 * SLOW, 0.05)
    r = call(a1, 'do.send', {'to': gone_id, 'event': 'dm', 'data': 1})
    c.ok('a send to a gone connection of a live node: NOT_FOUND (from that node)', err_type(r) == 'NOT_FOUND' and r.get('ok') is False, r)
    t0 = time.monotonic()
    r = call(a1, 'do.send', {'to': '3.1@no-such-node', 'event': 'dm', 'data': 1})
    dt = time.monotonic() - t0
    c.ok('a send to a connection of an unknown node: NOT_FOUND at once (%.2f s)' % dt, err_type(r) == 'NOT_FOUND' and dt < 1.0 * SLOW, r)

    # --- rooms query of a remote connection
    call(b1, 'do.join', {'room': 'r-b1'})
    r = call(a1, 'do.rooms', {'conn': b1i})
    c.eq("rooms query from a's service about a connection on b", r, {'rooms': ['r-b1', 'r1']})
    r = call(a1, 'do.rooms', {'conn': gone_id})
    c.ok('rooms query about a gone remote connection: NOT_FOUND', err_type(r) == 'NOT_FOUND', r)

    # --- join/leave of a remote connection refused (rooms are for the service where it is)
    r = call(a1, 'do.join', {'room': 'rx', 'conn': b1i})
    c.ok('join of a remote connection refused with NOT_FOUND', r and r.get('ok') is False and err_type(r) == 'NOT_FOUND', r)
    r = call(a1, 'do.leave', {'room': 'r1', 'conn': b1i})
    c.ok('leave of a remote connection refused with NOT_FOUND', r and r.get('ok') is False and err_type(r) == 'NOT_FOUND', r)
    r = call(a1, 'do.rooms', {'conn': b1i})
    c.eq('... and its rooms are unchanged', r, {'rooms': ['r-b1', 'r1']})

    # --- close of a remote connection
    b4 = WS(ws_url('b'))
    b4i = b4.whoami()
    r = call(a1, 'do.close', {'to': b4i, 'code': 4001, 'reason': 'bye from a'})
    c.eq("close of a connection on b from a's service: ok", r, {'ok': True})
    c.eq('the remote client sees the close code and reason', b4.wait_close(5 * SLOW), (4001, 'bye from a'))
    r = call(a1, 'do.close', {'to': b4i})
    c.ok('closing it again: NOT_FOUND', err_type(r) == 'NOT_FOUND', r)

    for w in cl.values():
        w.close()


# ------------------------------------------------------------------ phase three
def nats_kill():
    pid = int(open(STATE['nats']['pidfile']).read())
    os.kill(pid, signal.SIGKILL)
    return pid


def nats_restart():
    log = open(STATE['nats']['log'], 'a')
    p = subprocess.Popen(STATE['nats']['cmd'], stdout=log, stderr=log, start_new_session=True)
    with open(STATE['nats']['pidfile'], 'w') as f:
        f.write(str(p.pid))
    return p.pid


def phase_three():
    c.ok('three nodes hear each other (linkd_cluster_nodes 2 on a, b and c)',
         all(wait_metric(n, 'linkd_cluster_nodes', lambda v: v == 2, 6) for n in 'abc'),
         {n: M(n, 'linkd_cluster_nodes') for n in 'abc'})
    (a1, a1i), (a2, a2i) = connect('a', 2)
    (b1, b1i), = connect('b', 1)
    (c1, c1i), (c2, c2i) = connect('c', 2)
    cl = {'a1': a1, 'a2': a2, 'b1': b1, 'c1': c1, 'c2': c2}
    for w in (a1, a2, b1, c1):
        call(w, 'do.join', {'room': 'r3'})

    r = call(a1, 'do.count', {'room': 'r3', 'timeout': 2000})
    c.eq("room count from a's service across 3 nodes (2 + 1 + 1 members)", r, {'members': 4, 'nodes': 3, 'nodes_known': 3})
    r = call(c2, 'do.count', {'room': 'r3', 'timeout': 2000})
    c.eq("the same asked of c's service (c2 is no member)", r, {'members': 4, 'nodes': 3, 'nodes_known': 3})
    t0 = time.monotonic()
    r = call(b1, 'do.count', {'room': 'nobody-here', 'timeout': 2000})
    dt = time.monotonic() - t0
    c.ok('room count of an empty room: 0 members, 3 nodes, answered before the timeout (%.2f s)' % dt,
         r == {'members': 0, 'nodes': 3, 'nodes_known': 3} and dt < 1.5 * SLOW, r)

    call(b1, 'do.emit', {'room': 'r3', 'event': 'e3', 'data': 3})
    got = deliveries(cl, is_ev('e3'), ['a1', 'a2', 'b1', 'c1'])
    c.eq("a push from b's service reaches the members on a, b and c once (c2 no member)",
         got, {'a1': 1, 'a2': 1, 'b1': 1, 'c1': 1, 'c2': 0})
    call(a1, 'do.emit', {'room': 'r3', 'event': 'e3x', 'data': 3, 'except': [b1i, c1i]})
    got = deliveries(cl, is_ev('e3x'), ['a1', 'a2'])
    c.eq('except list naming connections of two other nodes', got, {'a1': 1, 'a2': 1, 'b1': 0, 'c1': 0, 'c2': 0})
    call(c2, 'do.all', {'event': 'all3', 'data': 0})
    got = deliveries(cl, is_ev('all3'), cl)
    c.eq("broadcast-all from c's service across 3 nodes", got, {n: 1 for n in cl})
    r = call(a1, 'do.send', {'to': c2i, 'event': 'dm3', 'data': 1})
    c.ok("a send from a's service to a connection on c", r == {'ok': True} and c2.expect(is_ev('dm3'), 5 * SLOW) is not None, r)

    # --- NATS killed and restarted under traffic
    for w in cl.values():
        drain(w, 0.05)
        w.inbox.clear()
    pusher = WS(ws_url('a'))
    pusher.whoami()
    stop = threading.Event()
    sent = [0]
    def push_loop():
        while not stop.is_set():
            try:
                pusher.send('do.emit', {'room': 'r3', 'event': 'tick', 'data': {'n': sent[0]}})
            except Exception:
                return
            sent[0] += 1
            time.sleep(0.04)
    th = threading.Thread(target=push_loop, daemon=True)
    th.start()
    time.sleep(0.5 * SLOW)
    dis0 = {n: M(n, 'linkd_cluster_disconnects_total') or 0 for n in 'ab'}
    rec0 = {n: M(n, 'linkd_cluster_reconnects_total') or 0 for n in 'ab'}
    nats_kill()
    n_kill = sent[0]
    down = wait_until(lambda: health('a').get('cluster') == 'disconnected', 3 * SLOW, 0.05)
    c.ok('NATS killed: /health on a says cluster disconnected', down, health('a'))
    time.sleep(1.0)
    n_mid = sent[0]
    # local delivery goes on: a2 gets ticks sent while NATS is down
    def local_ticks():
        drain(a2, 0.05)
        return [m['data']['n'] for m in a2.inbox if is_ev('tick')(m) and n_kill < m['data']['n'] <= n_mid]
    seen = wait_until(lambda: len(local_ticks()) >= (n_mid - n_kill) // 2 and local_ticks(), 3 * SLOW, 0.05)
    c.ok('while NATS is down the local members still get the pushes (%d of %d ticks at a2)' % (len(local_ticks()), n_mid - n_kill),
         seen and len(local_ticks()) >= (n_mid - n_kill) // 2, '')
    c.ok('the nodes live on without NATS (a, b, c answer /health)', all(health(n).get('status') == 'healthy' for n in 'abc'),
         {n: health(n) for n in 'abc'})
    c.ok('linkd_cluster_disconnects_total grew on a and b',
         all(wait_until(lambda: (M(n, 'linkd_cluster_disconnects_total') or 0) > dis0[n], 3 * SLOW, 0.1) for n in 'ab'),
         {n: M(n, 'linkd_cluster_disconnects_total') for n in 'ab'})
    # past libnats' 1 MiB reconnect buffer, publishes are dropped (counted); local delivery is not
    d0 = M('a', 'linkd_cluster_dropped_total') or 0
    big_sender = WS(ws_url('a'))
    big_sender.whoami()
    pad = 'x' * 45000
    for i in range(30):
        big_sender.send('do.emit', {'room': 'r3', 'event': 'big', 'data': {'i': i, 'p': pad}})
    def bigs():
        drain(a2, 0.05)
        return len([m for m in a2.inbox if is_ev('big')(m)])
    wait_until(lambda: bigs() >= 30, 5 * SLOW, 0.05)
    d1 = wait_until(lambda: (M('a', 'linkd_cluster_dropped_total') or 0) > d0 and M('a', 'linkd_cluster_dropped_total'), 3 * SLOW, 0.1)
    c.ok('NATS down: 30 pushes of 45 KB (1.3 MB) reach the local member (%d) and what passes the 1 MiB buffer is counted dropped (%s)' % (bigs(), d1),
         bigs() == 30 and d1, 'dropped %s -> %s' % (d0, M('a', 'linkd_cluster_dropped_total')))
    a2.inbox = [m for m in a2.inbox if not is_ev('big')(m)]
    big_sender.close()
    nats_restart()
    up = all(wait_until(lambda: health(n).get('cluster') == 'connected', 10 * SLOW, 0.1) for n in 'abc')
    c.ok('NATS restarted: every node reconnects (within ~1 s of its reconnect wait)', up, {n: health(n) for n in 'abc'})
    n_up = sent[0]
    def remote_ticks(w):
        drain(w, 0.05)
        return [m['data']['n'] for m in w.inbox if is_ev('tick')(m) and m['data']['n'] > n_up]
    ok = wait_until(lambda: len(remote_ticks(b1)) >= 3 and len(remote_ticks(c1)) >= 3, 8 * SLOW, 0.05)
    c.ok("remote delivery resumes: b1 and c1 get the ticks pushed after the reconnect",
         ok, 'b1 %s, c1 %s (sent %d)' % (remote_ticks(b1)[:5], remote_ticks(c1)[:5], sent[0]))
    for name, w in (('b1', b1), ('c1', c1)):
        ns = [m['data']['n'] for m in w.inbox if is_ev('tick')(m)]
        c.ok('the ticks that reached %s across NATS came in the order pushed, none twice (%d)' % (name, len(ns)),
             ns == sorted(set(ns)), ns[:40])
    c.ok('linkd_cluster_reconnects_total grew on a and b',
         all((M(n, 'linkd_cluster_reconnects_total') or 0) > rec0[n] for n in 'ab'),
         {n: M(n, 'linkd_cluster_reconnects_total') for n in 'ab'})
    stop.set()
    th.join(2)
    c.ok('every tick reached a2, in order, none twice (local path, NATS or not)',
         _in_order(a2, sent[0]), '')
    pusher.close()
    wait_until(lambda: all(M(n, 'linkd_cluster_nodes') == 2 for n in 'abc'), 6 * SLOW, 0.1)

    # --- node c killed
    c_pid = NODES['c']['pid']
    c1.inbox.clear()
    os.kill(c_pid, signal.SIGKILL)
    t0 = time.monotonic()
    r = call(a1, 'do.send', {'to': c1i, 'event': 'dm', 'data': 1}, timeout=6 * SLOW)
    dt = time.monotonic() - t0
    c.ok('right after node c died: a send to its connection ends NOT_FOUND within the 2 s answer time (%.2f s)' % dt,
         err_type(r) == 'NOT_FOUND' and dt < 3.0 * SLOW, r)
    gone = wait_metric('a', 'linkd_cluster_nodes', lambda v: v == 1, 6)
    dt = time.monotonic() - t0
    c.ok('linkd_cluster_nodes on a drops to 1 (%.1f s after the kill)' % dt, gone, M('a', 'linkd_cluster_nodes'))
    c.ok('... and on b', wait_metric('b', 'linkd_cluster_nodes', lambda v: v == 1, 3), M('b', 'linkd_cluster_nodes'))
    t0 = time.monotonic()
    r = call(a1, 'do.send', {'to': c2i, 'event': 'dm', 'data': 1})
    dt = time.monotonic() - t0
    c.ok('then a send to a connection of the dead node: NOT_FOUND at once (%.3f s)' % dt,
         err_type(r) == 'NOT_FOUND' and dt < 0.5 * SLOW, r)
    t0 = time.monotonic()
    r = call(a1, 'do.rooms', {'conn': c1i})
    dt = time.monotonic() - t0
    c.ok('rooms query about it: NOT_FOUND at once (%.3f s)' % dt, err_type(r) == 'NOT_FOUND' and dt < 0.5 * SLOW, r)
    r = call(a1, 'do.count', {'room': 'r3', 'timeout': 1000})
    c.eq('room count without c: a and b answer, 2 nodes known', r, {'members': 3, 'nodes': 2, 'nodes_known': 2})
    call(b1, 'do.emit', {'room': 'r3', 'event': 'e4', 'data': 4})
    got = deliveries({'a1': a1, 'a2': a2, 'b1': b1}, is_ev('e4'), ['a1', 'a2', 'b1'])
    c.eq('the two live nodes go on sharing the room', got, {'a1': 1, 'a2': 1, 'b1': 1})
    for w in (a1, a2, b1):
        w.close()


def _in_order(w, n_sent):
    drain(w, 0.5 * SLOW)
    ns = [m['data']['n'] for m in w.inbox if is_ev('tick')(m)]
    return ns == sorted(set(ns)) and len(ns) >= n_sent - 2


# ------------------------------------------------------------------ phase solo
def member_counts(node, room, timeout_ms):
    """A new connection on node joins room, then its service counts the
    room's members: (the connection, the count's result, seconds taken)."""
    (w, _), = connect(node, 1)
    call(w, 'do.join', {'room': room})
    t0 = time.monotonic()
    r = call(w, 'do.count', {'room': room, 'timeout': timeout_ms})
    return w, r, time.monotonic() - t0


def phase_solo():
    h = wait_until(lambda: health('solo').get('cluster') == 'connected' and health('solo'), 10 * SLOW, 0.1)
    c.ok('a node alone on its NATS: connected', h, health('solo'))
    s1, r, dt = member_counts('solo', 'rs', 2000)
    c.ok('... a room count is answered at once, no other node to wait for (%.2f s)' % dt,
         r == {'members': 1, 'nodes': 1, 'nodes_known': 1} and dt < 1.0 * SLOW, r)
    p0 = M('solo', 'linkd_cluster_published_total')
    call(s1, 'do.emit', {'room': 'rs', 'event': 'es', 'data': 1})
    got = deliveries({'s1': s1}, is_ev('es'), ['s1'])
    c.ok('... its pushes are delivered here and published once', got == {'s1': 1} and M('solo', 'linkd_cluster_published_total') - p0 >= 1,
         (got, p0, M('solo', 'linkd_cluster_published_total')))
    s1.close()


# ------------------------------------------------------------------ phase quiet
def phase_quiet():
    # node solo again, now with node quiet beside it: a node that has no
    # service at all still answers a room count (0), so the count is whole
    # at once instead of at its timeout
    c.ok('node solo hears node quiet (linkd_cluster_nodes 1)', wait_metric('solo', 'linkd_cluster_nodes', lambda v: v == 1, 6),
         M('solo', 'linkd_cluster_nodes'))
    s1, r, dt = member_counts('solo', 'rq', 4000)
    c.ok('a room count with a node that has no service: 2 nodes answer, well before the 4 s timeout (%.2f s)' % dt,
         r == {'members': 1, 'nodes': 2, 'nodes_known': 2} and dt < 2.0 * SLOW, r)
    s1.close()


# ------------------------------------------------------------------ phase alone
def phase_alone():
    h = health('s')
    c.ok('a node without --nats-url: /health without "node" or "cluster"', 'node' not in h and 'cluster' not in h and h.get('status') == 'healthy', h)
    (s1, s1i), (s2, s2i) = connect('s', 2)
    c.ok('... connection ids are slot.gen, without @', all(i and '@' not in i and len(i.split('.')) == 2 for i in (s1i, s2i)), (s1i, s2i))
    call(s1, 'do.join', {'room': 'ra'})
    call(s2, 'do.join', {'room': 'ra'})
    call(s1, 'do.emit', {'room': 'ra', 'event': 'ea', 'data': 1})
    got = deliveries({'s1': s1, 's2': s2}, is_ev('ea'), ['s1', 's2'])
    c.eq('... room pushes as before', got, {'s1': 1, 's2': 1})
    r = call(s1, 'do.count', {'room': 'ra', 'timeout': 500})
    c.eq('... a room count is answered by this node alone', r, {'members': 2, 'nodes': 1, 'nodes_known': 1})
    r = call(s1, 'do.send', {'to': '%s@elsewhere' % s2i, 'event': 'x', 'data': 1})
    c.ok('... an id naming another node: NOT_FOUND', err_type(r) == 'NOT_FOUND', r)
    vals = {k: M('s', k) for k in ('linkd_cluster_nodes', 'linkd_cluster_published_total', 'linkd_cluster_received_total',
                                    'linkd_cluster_subscriptions')}
    c.ok('... cluster metrics at zero', all(v == 0 for v in vals.values()), vals)
    s1.close()
    s2.close()


{'two': phase_two, 'three': phase_three, 'solo': phase_solo, 'quiet': phase_quiet, 'alone': phase_alone}[PHASE]()
sys.exit(0)
