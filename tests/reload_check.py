#!/usr/bin/python3
"""Python parts of tests/t_reload.sh (SIGHUP reloads). Prints PASS:/FAIL: lines.

  reload_check.py early FIFO PID PORT CONFTEXT
      linkd was started with --config FIFO: once it has the FIFO open (inside
      main, before anything listens) send SIGHUP, then hand it the config and
      send SIGHUP every 10 ms until /health answers. linkd must survive both.
  reload_check.py hupstorm PID PORT
      SIGTERM, then SIGHUP as fast as possible until PID exits (is a zombie);
      the shell checks the exit status.
  reload_check.py keepup PID PORT SOCKET
      A service link that never registers while SIGHUPs come every 300 ms:
      linkd's register timeout must still close it (reloads must not hold
      back its periodic housekeeping).
  reload_check.py traffic PORT PID CONF BASEFILE SVC_OUT
      WebSocket clients (echo with ids, room pushes) and HTTP requests while
      the config file changes and linkd gets a SIGHUP every ~100 ms, 10 times.
  reload_check.py live PORT PID CONF BASEFILE TOKENFILE
      Settings that take effect on a live linkd: rate_limit on an open
      connection, handler_timeout, max_connections_per_user, heartbeat_interval.

SLOW (env, default 1) scales the waits (valgrind, qemu).
"""
import errno, json, os, signal, sys, threading, time, urllib.request, http.client

sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.dirname(os.path.abspath(__file__))))
from ws_client import WS, Checks, Closed, wait_until, handshake  # noqa: E402
import ws_client  # noqa: E402

SLOW = float(os.environ.get('SLOW', '1'))
c = Checks('t_reload')


def metric(base, name):
    """ws_client.metric, or None when linkd does not answer (it may be gone)."""
    try:
        return ws_client.metric(base, name)
    except Exception:  # noqa: BLE001
        return None


def alive(pid):
    """Running and not a zombie (linkd is the shell's child: kill(pid, 0) succeeds on a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(')') + 2] not in 'ZX'


def health(port, timeout=1):
    try:
        return urllib.request.urlopen('http://127.0.0.1:%d/health' % port, timeout=timeout).status == 200
    except Exception:
        return False


def write_conf(path, text):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def reload_sum(base):
    a = metric(base, 'linkd_reloads_total')
    f = metric(base, 'linkd_reloads_failed_total')
    if a is None or f is None:
        return None
    return a + f


def hup(pid, base, timeout=10):
    """SIGHUP, then wait until linkd has handled it (applied or refused). True if it did."""
    before = reload_sum(base)
    try:
        os.kill(pid, signal.SIGHUP)   # sent whatever: a linkd without these counters must face it too
    except ProcessLookupError:
        return False
    if before is None:
        return False
    return bool(wait_until(lambda: (reload_sum(base) or 0) >= before + 1, timeout * SLOW))


# ---------------------------------------------------------------- early
def early(fifo, pid, port, text):
    end = time.monotonic() + 15 * SLOW
    fd = None
    while time.monotonic() < end and alive(pid):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # ENXIO until linkd opens it to read
            break
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        time.sleep(0.01)
    if not c.ok('linkd opens its --config file (a FIFO) at start', fd is not None,
                'linkd %s' % ('still running' if alive(pid) else 'exited')):
        return
    # linkd is now inside main(), reading the config, long before /health answers.
    os.kill(pid, signal.SIGHUP)
    # An absence needs a window: a default-action SIGHUP kills at once.
    time.sleep(0.3 * SLOW)
    c.ok('SIGHUP while linkd reads its config at start (before it listens): linkd still running', alive(pid))
    c.ok('... and /health does not answer yet (the SIGHUP came before it)', not health(port, 0.2))
    # Later reloads read a regular file at the same path; this start reads the FIFO it has open.
    os.unlink(fifo)
    with open(fifo, 'w') as f:
        f.write(text)
    try:
        os.write(fd, text.encode())
        os.close(fd)
    except BrokenPipeError:   # linkd is gone
        pass
    hups, up = 0, False
    end = time.monotonic() + 15 * SLOW
    while time.monotonic() < end and alive(pid):
        os.kill(pid, signal.SIGHUP)
        hups += 1
        if health(port, 0.2):
            up = True
            break
        time.sleep(0.01)
    c.ok('SIGHUP every 10 ms from then until /health answers (%d sent): linkd comes up and answers' % hups,
         up and alive(pid), 'linkd %s' % ('running but /health silent' if alive(pid) else 'exited'))


def hupstorm(pid, port):
    n = 0
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 30 * SLOW
    while time.monotonic() < end and alive(pid):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            break
        n += 1
        if SLOW > 1:
            # under valgrind an unpaced storm starves its one-thread scheduler
            # (linkd never gets to run its exit); 2,000 a second still lands
            # many inside the window where the signal handle is closing
            time.sleep(0.0005)
    print('# hupstorm: %d SIGHUPs' % n, file=sys.stderr)


def keepup(pid, port, sock):
    """A service link that never registers, while SIGHUPs come every 300 ms: the
    register timeout (500 ms, set by the caller) must still close it — reloads
    must not hold back linkd's periodic housekeeping (pings, deadlines)."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.settimeout(0.05)
    t0 = time.monotonic()
    closed, hups = None, 0
    while time.monotonic() - t0 < 5 * SLOW and alive(pid):
        os.kill(pid, signal.SIGHUP)
        hups += 1
        try:
            if s.recv(100) == b'':
                closed = time.monotonic() - t0
                break
        except socket.timeout:
            pass
        except OSError:
            closed = time.monotonic() - t0
            break
        time.sleep(0.25)
    c.ok('SIGHUP every 300 ms: a link that never registers is still closed by register_timeout = 500ms (%s, %d SIGHUPs)'
         % ('after %.1f s' % closed if closed is not None else 'still open after %.0f s' % (5 * SLOW), hups),
         closed is not None)
    s.close()


# ---------------------------------------------------------------- traffic
def traffic(port, pid, conf, basefile, svc_out):
    base = 'http://127.0.0.1:%d' % port
    url = 'ws://127.0.0.1:%d/ws/echo' % port
    basetext = open(basefile).read()
    tmo = 5 * SLOW
    N = 4
    ws = [WS(url, timeout=tmo) for _ in range(N)]
    ids = [w.whoami() for w in ws]
    joined = [w.call('do.join', {'room': 'traffic'}, timeout=tmo) for w in ws]
    if not c.ok('traffic: %d WebSocket clients connect and join room "traffic"' % N,
                all(ids) and all(j and j.get('data', {}).get('ok') for j in joined), repr(joined)):
        return
    accepted0 = metric(base, 'linkd_ws_accepted_total')
    applied0 = metric(base, 'linkd_reloads_total')
    failed0 = metric(base, 'linkd_reloads_failed_total')
    lock = threading.Lock()
    st = {'ws_ok': 0, 'ws_bad': [], 'emitted': [], 'http_ok': 0, 'http_bad': []}
    stop = threading.Event()

    def ws_loop(i):
        w, k = ws[i], 0
        try:
            while not stop.is_set():
                k += 1
                if i == 0 and k % 4 == 0:
                    r = w.call('do.emit', {'room': 'traffic', 'event': 't.push', 'data': {'seq': k}}, timeout=tmo)
                    with lock:
                        if r and r.get('data', {}).get('ok'):
                            st['emitted'].append(k)
                        else:
                            st['ws_bad'].append(('emit', i, k, r))
                    continue
                r = w.call('echo', {'i': i, 'k': k}, timeout=tmo)
                with lock:
                    if r and r.get('data') == {'i': i, 'k': k}:
                        st['ws_ok'] += 1
                    else:
                        st['ws_bad'].append(('echo', i, k, r))
        except Closed as e:
            with lock:
                st['ws_bad'].append(('closed', i, e.code))
        except Exception as e:  # noqa: BLE001
            with lock:
                st['ws_bad'].append(('exception', i, repr(e)))

    def http_loop():
        conn, k = None, 0
        while not stop.is_set():
            k += 1
            try:
                if conn is None or k % 8 == 0:   # keep-alive, and new connections now and then
                    if conn:
                        conn.close()
                    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=tmo)
                conn.request('GET', '/api/r%d' % k)
                r = conn.getresponse()
                body = r.read()
                ok = r.status == 200 and json.loads(body)['params'].get('x') == 'r%d' % k
                with lock:
                    if ok:
                        st['http_ok'] += 1
                    else:
                        st['http_bad'].append((k, r.status, body[:100]))
            except Exception as e:  # noqa: BLE001
                with lock:
                    st['http_bad'].append((k, repr(e)))
                conn = None
        if conn:
            conn.close()

    threads = [threading.Thread(target=ws_loop, args=(i,), daemon=True) for i in range(N)] + \
              [threading.Thread(target=http_loop, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: st['ws_ok'] > 20 and st['http_ok'] > 10, 10 * SLOW)
        # Every reload changes something live (timeouts, heartbeat, outbound cap),
        # and the last one puts the base file back.
        variants = ['http_timeout = 20s\nhandler_timeout = 8s\nheartbeat_interval = 20s\nmax_outbound = 2m\n',
                    'http_timeout = 25s\nhandler_timeout = 9s\nheartbeat_interval = 25s\nmax_outbound = 512k\n']
        with lock:
            at_first = (st['ws_ok'], st['http_ok'])
        handled = 0
        for n in range(10):
            write_conf(conf, basetext + (variants[n % 2] if n < 9 else ''))
            handled += hup(pid, base)
            time.sleep(0.1)
        with lock:
            at_last = (st['ws_ok'], st['http_ok'])
        # some more traffic after the last reload, then stop
        wait_until(lambda: st['ws_ok'] > at_last[0] + 20 and st['http_ok'] > at_last[1] + 10, 10 * SLOW)
    finally:
        stop.set()
    for t in threads:
        t.join(30 * SLOW)
    applied = metric(base, 'linkd_reloads_total')
    failed = metric(base, 'linkd_reloads_failed_total')
    c.ok('traffic: 10 SIGHUPs ~100 ms apart, each handled (linkd_reloads_total %s -> %s, failed %s -> %s)'
         % (applied0, applied, failed0, failed),
         handled == 10 and applied == applied0 + 10 and failed == failed0, 'handled %d' % handled)
    c.ok('traffic: every WebSocket message answered with its own id and data (%d, %d during the reloads)'
         % (st['ws_ok'], at_last[0] - at_first[0]),
         not st['ws_bad'] and st['ws_ok'] > 0, repr(st['ws_bad'][:3]))
    c.ok('traffic: WebSocket messages flowed while the reloads happened', at_last[0] > at_first[0],
         'answered at first SIGHUP %d, at last %d' % (at_first[0], at_last[0]))
    c.ok('traffic: every HTTP request answered 200 with its own path (%d, %d during the reloads)'
         % (st['http_ok'], at_last[1] - at_first[1]),
         not st['http_bad'] and st['http_ok'] > 0, repr(st['http_bad'][:3]))
    c.ok('traffic: HTTP requests flowed while the reloads happened', at_last[1] > at_first[1],
         'answered at first SIGHUP %d, at last %d' % (at_first[1], at_last[1]))
    # every member got every room push, in order
    got = []
    try:
        for w in ws:
            w.sync(timeout=tmo)
            got.append([m['data']['seq'] for m in w.inbox if isinstance(m, dict) and m.get('type') == 't.push'])
    except Exception as e:  # noqa: BLE001
        got.append(repr(e))
    c.ok('traffic: each of the %d room members got all %d room pushes, in order' % (N, len(st['emitted'])),
         len(st['emitted']) > 0 and all(g == st['emitted'] for g in got),
         'emitted %s...; got %s' % (st['emitted'][:5], [g[:5] if isinstance(g, list) else g for g in got]))
    accepted = metric(base, 'linkd_ws_accepted_total')
    c.ok('traffic: no WebSocket connection dropped (linkd_ws_accepted_total %s, unchanged; linkd_ws_connections %s)'
         % (accepted, metric(base, 'linkd_ws_connections')),
         accepted == accepted0 and metric(base, 'linkd_ws_connections') == N and not any(w.closed for w in ws),
         'accepted before %s' % accepted0)
    ids2 = [w.whoami() for w in ws]
    c.eq('traffic: the connections keep their ids', ids2, ids)
    rooms = [w.call('do.rooms', timeout=tmo) for w in ws]
    c.ok('traffic: memberships intact (each connection still in "traffic"; linkd_memberships %s, linkd_rooms %s)'
         % (metric(base, 'linkd_memberships'), metric(base, 'linkd_rooms')),
         all(r and r['data'].get('rooms') == ['traffic'] for r in rooms)
         and metric(base, 'linkd_memberships') == N and metric(base, 'linkd_rooms') == 1, repr(rooms))
    lines = open(svc_out).read().splitlines()
    ready = sum(1 for l in lines if l.startswith('READY'))
    closed = sum(1 for l in lines if l.startswith('LINK_CLOSED'))
    events = [json.loads(l[6:])['type'] for l in lines if l.startswith('EVENT ')]
    c.ok('traffic: the service link was not touched (one READY, no LINK_CLOSED, no EXISTING/DISCONNECTED; '
         'linkd_service_instances %s)' % metric(base, 'linkd_service_instances'),
         ready == 1 and closed == 0 and events == ['CONNECTED'] * N and metric(base, 'linkd_service_instances') == 1,
         'READY %d, LINK_CLOSED %d, events %s' % (ready, closed, events))
    for w in ws:
        w.close()


# ---------------------------------------------------------------- live settings
def live(port, pid, conf, basefile, tokfile):
    base = 'http://127.0.0.1:%d' % port
    url = 'ws://127.0.0.1:%d/ws/echo' % port
    basetext = open(basefile).read()
    tok = open(tokfile).read().strip()
    tmo = 5 * SLOW

    def burst(w, n, tag):
        ids = ['%s%d' % (tag, k) for k in range(n)]
        for i in ids:
            w.send('echo', {'n': i}, i)
        rs = [w.reply(i, tmo) for i in ids]
        return [(r or {}).get('error', {}).get('type') if r and 'error' in r else ('ok' if r else None) for r in rs]

    # rate_limit: applies to a connection that was open before the reload
    w = WS(url, timeout=tmo)
    before = burst(w, 30, 'a')
    c.ok('rate_limit = 0 (no limit): 30 messages at once all answered', before == ['ok'] * 30, repr(before))
    write_conf(conf, basetext + 'rate_limit = 1\nrate_burst = 2\n')
    c.ok('reload with rate_limit = 1, rate_burst = 2 handled', hup(pid, base))
    after = burst(w, 10, 'b')
    c.ok('... on the connection opened before it, 10 messages at once: RATE_LIMITED appears (%d of 10)'
         % after.count('RATE_LIMITED'),
         after.count('RATE_LIMITED') >= 5 and after.count(None) == 0, repr(after))
    r = w.call('echo', {'still': 1}, timeout=tmo)   # answered (RATE_LIMITED or echoed), not closed
    c.ok('... and that connection stays open', r is not None and not w.closed, repr(r))
    write_conf(conf, basetext)
    c.ok('reload back to rate_limit = 0 handled', hup(pid, base))
    again = burst(w, 30, 'c')
    c.ok('... 30 messages at once on the same connection: all answered again', again == ['ok'] * 30, repr(again))

    # handler_timeout (default 10 s): 300 ms after the reload
    write_conf(conf, basetext + 'handler_timeout = 300ms\n')
    c.ok('reload with handler_timeout = 300ms handled', hup(pid, base))
    t0 = time.monotonic()
    r = w.call('do.noreply', timeout=5)   # 5 s, not scaled: the old 10 s must not pass
    dt = time.monotonic() - t0
    c.ok('... a message the service never answers gets TIMEOUT in %.2f s (< 5 s; 10 s before)' % dt,
         r is not None and r.get('error', {}).get('type') == 'TIMEOUT', repr(r))
    w.close()

    # max_connections_per_user (default 5): 1 after the reload
    hdr = 'Authorization: Bearer ' + tok
    std = ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
           'Sec-WebSocket-Version: 13']
    u1 = WS(url, headers=[hdr], timeout=tmo)
    who = u1.call('whoami', timeout=tmo)
    c.ok('a WebSocket with a valid token gets its user', who and who['data']['user']['user_id'] == 'rl-1', repr(who))
    line, _ = handshake('127.0.0.1', port, '/ws/echo', std + [hdr])
    c.ok('max_connections_per_user 5 (default): a second connection of that user is accepted (%s)' % line,
         ' 101 ' in line + ' ', line)
    wait_until(lambda: metric(base, 'linkd_ws_connections') == 1, tmo)
    write_conf(conf, basetext + 'max_connections_per_user = 1\n')
    c.ok('reload with max_connections_per_user = 1 handled', hup(pid, base))
    line, _ = handshake('127.0.0.1', port, '/ws/echo', std + [hdr])
    c.ok('... a second connection of that user now gets 429 (%s)' % line, ' 429 ' in line + ' ', line)
    c.ok('... the first one is still open', u1.call('echo', {'x': 1}, timeout=tmo) is not None)
    u1.close()

    # heartbeat_interval (default 30 s): a new connection is pinged after 300 ms
    write_conf(conf, basetext + 'heartbeat_interval = 300ms\n')
    c.ok('reload with heartbeat_interval = 300ms handled', hup(pid, base))
    h = WS(url, timeout=tmo)
    t0 = time.monotonic()
    p = h.expect(lambda m: isinstance(m, tuple) and m[0] == 'ping', timeout=5)
    c.ok('... a new connection is pinged within %.2f s (< 5 s; 30 s before)' % (time.monotonic() - t0), p is not None)
    write_conf(conf, basetext)
    c.ok('reload back to the base file handled', hup(pid, base))
    h.close()


if __name__ == '__main__':
    cmd = sys.argv[1]
    if cmd == 'early':
        early(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif cmd == 'hupstorm':
        hupstorm(int(sys.argv[2]), int(sys.argv[3]))
    elif cmd == 'keepup':
        keepup(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == 'traffic':
        traffic(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    elif cmd == 'live':
        live(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
    else:
        print(__doc__)
        sys.exit(2)
