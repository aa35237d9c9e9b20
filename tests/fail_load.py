#!/usr/bin/python3
"""Client load for the failure proofs (tests/t_fail_*.sh): WebSocket clients
and keep-alive HTTP clients on one asyncio loop (Debian's python3-websockets),
every request with a deadline, every outcome recorded.

  fail_load.py svckill   ...   the service is killed and restarted under load
  fail_load.py linkdkill ...   linkd is killed and restarted under load
  fail_load.py sigterm   ...   linkd is stopped (SIGTERM) under pushes
  fail_load.py check-sigterm   compares what clients got with what was acknowledged

The driving script talks to it with signals and milestone lines on stdout:
  CONNECTED ...     every client is connected (and joined, for svckill)
  DOWN k            SIGHUP arrived: the script is about to kill something (k-th time)
  SEEN <what>       the first answer of a kind since the last DOWN (ws-unavailable, http-503, lost ...)
  MARKED k          SIGUSR2 arrived: it is back; from now until the next DOWN requests must succeed
  FLOWING k         every client had a successful answer to a request sent after mark k
  STOPPING          SIGUSR1 arrived: stop sending, settle, check, exit
and PASS:/FAIL: lines (prefixed with --name) for the checks it makes itself.
Time stamps are time.monotonic() (CLOCK_MONOTONIC, comparable across processes).
"""
import argparse, asyncio, collections, itertools, json, os, re, signal, sys, time

import websockets

NAME = 'fail_load'
FAILED = 0


def say(*a):
    sys.stdout.write(' '.join(str(x) for x in a) + '\n')
    sys.stdout.flush()


def check(what, cond, why=''):
    global FAILED
    if cond:
        say('PASS: %s: %s' % (NAME, what))
    else:
        FAILED += 1
        say('FAIL: %s: %s — %s' % (NAME, what, (str(why) or 'failed')[:600]))
    return cond


_seen = set()


def seen(what):
    if what not in _seen:
        _seen.add(what)
        say('SEEN', what)


class Lost(Exception):
    """The connection went away before the answer."""


_ids = itertools.count(1)


class Req:
    __slots__ = ('client', 'id', 'kind', 't0', 't1', 'outcome', 'detail')

    def __init__(self, client, id, kind):
        self.client, self.id, self.kind = client, id, kind
        self.t0 = time.monotonic()
        self.t1 = None
        self.outcome = None    # ok | unavailable | lost | hang | other
        self.detail = None

    def done(self, outcome, detail=None):
        self.t1 = time.monotonic()
        self.outcome, self.detail = outcome, detail

    def __repr__(self):
        return '%s %s %s %s after %.2fs%s' % (self.client, self.kind, self.id, self.outcome,
                                             (self.t1 or time.monotonic()) - self.t0,
                                             (' (%s)' % str(self.detail)[:120]) if self.detail else '')


class WsClient:
    """One WebSocket connection: requests by id, pushes kept in order."""

    def __init__(self, tag, url):
        self.tag, self.url = tag, url
        self.ws = None
        self.pending = {}        # id -> future
        self.msgs = []           # every message received, in order (parsed JSON)
        self.push_waiters = []   # (pred, future)
        self.close = None        # (code, reason) once closed
        self.floods = 0          # "flood" pushes received
        self.reader = None
        self.conn_id = None

    async def connect(self, timeout):
        self.ws = None
        ws = await asyncio.wait_for(
            websockets.connect(self.url, ping_interval=None, close_timeout=2, compression=None,
                               max_size=1 << 22, max_queue=4096, open_timeout=timeout), timeout)
        self.ws, self.close = ws, None
        self.reader = asyncio.ensure_future(self._read(ws))

    async def _read(self, ws):
        try:
            async for raw in ws:
                try:
                    m = json.loads(raw)
                except ValueError:
                    m = {'unparsable': raw}
                if isinstance(m, dict) and m.get('type') == 'flood':
                    self.floods += 1      # counted, not kept (they are big)
                    continue
                self.msgs.append(m)
                if isinstance(m, dict) and 'id' in m and 'type' not in m:
                    f = self.pending.pop(m['id'], None)
                    if f and not f.done():
                        f.set_result(m)
                else:
                    for pw in list(self.push_waiters):
                        if pw[0](m) and not pw[1].done():
                            pw[1].set_result(m)
                            self.push_waiters.remove(pw)
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - a reader must never die silently
            self.msgs.append({'reader_error': repr(e)})
        finally:
            self.close = (ws.close_code, ws.close_reason)
            for f in self.pending.values():
                if not f.done():
                    f.set_exception(Lost('closed %s' % (ws.close_code,)))
            self.pending.clear()

    @property
    def is_open(self):
        return self.ws is not None and self.close is None

    async def request(self, type_, data, bound, kind=None, id=None):
        """Sends {"type","data","id"}; returns a finished Req (never raises)."""
        id = id or '%s-%d' % (self.tag, next(_ids))
        r = Req(self.tag, id, kind or type_)
        if not self.is_open:
            r.done('lost', 'not connected')
            return r
        f = asyncio.get_running_loop().create_future()
        self.pending[id] = f
        try:
            await self.ws.send(json.dumps({'type': type_, 'data': data, 'id': id}))
            m = await asyncio.wait_for(f, bound)
        except asyncio.TimeoutError:
            self.pending.pop(id, None)
            r.done('hang', 'no answer within %.1f s' % bound)
            return r
        except (Lost, websockets.ConnectionClosed, OSError) as e:
            self.pending.pop(id, None)
            r.done('lost', e)
            return r
        err = m.get('error')
        if err is None:
            r.done('ok', m.get('data'))
        elif isinstance(err, dict) and err.get('type') == 'SERVICE_UNAVAILABLE':
            r.done('unavailable', err)
        else:
            r.done('other', m)
        return r

    async def wait_push(self, pred, bound):
        for m in self.msgs:
            if pred(m):
                return m
        f = asyncio.get_running_loop().create_future()
        self.push_waiters.append((pred, f))
        try:
            return await asyncio.wait_for(f, bound)
        except asyncio.TimeoutError:
            return None

    async def aclose(self):
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 3)
            except Exception:  # noqa: BLE001
                pass


class HttpClient:
    """A keep-alive HTTP/1.1 client (GET only), reconnecting when the
    connection is closed."""

    def __init__(self, tag, host, port):
        self.tag, self.host, self.port = tag, host, port
        self.r = self.w = None

    async def _open(self, bound):
        self.r, self.w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), bound)

    def _drop(self):
        if self.w is not None:
            try:
                self.w.close()
            except Exception:  # noqa: BLE001
                pass
        self.r = self.w = None

    async def get(self, path, bound, kind='http'):
        r = Req(self.tag, path, kind)
        try:
            if self.w is None:
                await self._open(bound)
            self.w.write(('GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n' % (path, self.host, self.port)).encode())
            status, body = await asyncio.wait_for(self._read_response(), max(0.1, bound - (time.monotonic() - r.t0)))
        except asyncio.TimeoutError:
            self._drop()
            r.done('hang', 'no answer within %.1f s' % bound)
            return r
        except (OSError, EOFError, asyncio.IncompleteReadError, ValueError) as e:
            self._drop()
            r.done('lost', repr(e)[:100])
            return r
        r.detail = status
        if status == 200:
            r.done('ok', status)
        elif status == 503:
            r.done('unavailable', body[:100])
        else:
            r.done('other', '%d %s' % (status, body[:100]))
        return r

    async def _read_response(self):
        line = await self.r.readline()
        if not line:
            raise EOFError('connection closed')
        m = re.match(rb'HTTP/1\.[01] (\d{3})', line)
        if not m:
            raise ValueError('bad status line %r' % line[:60])
        status = int(m.group(1))
        length, close = 0, False
        while True:
            h = await self.r.readline()
            if not h:
                raise EOFError('connection closed in the headers')
            if h in (b'\r\n', b'\n'):
                break
            k, _, v = h.decode('latin-1').partition(':')
            k = k.strip().lower()
            if k == 'content-length':
                length = int(v.strip())
            elif k == 'connection' and 'close' in v.lower():
                close = True
        body = await self.r.readexactly(length) if length else b''
        if close:
            self._drop()
        return status, body.decode('utf-8', 'replace')

    def aclose(self):
        self._drop()


# ---------------------------------------------------------------- control
class Control:
    """SIGHUP: something is about to be killed (DOWN k); SIGUSR2: it is back
    (MARKED k); SIGUSR1: stop (STOPPING)."""

    def __init__(self):
        self.stop = asyncio.Event()
        self.stopped = None
        self.marks, self.downs = [], []
        self.flows = []
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self._stop)
        loop.add_signal_handler(signal.SIGUSR2, self._mark)
        loop.add_signal_handler(signal.SIGHUP, self._down)

    @property
    def mark(self):
        return self.marks[-1] if self.marks else None

    def _stop(self):
        if not self.stop.is_set():
            self.stopped = time.monotonic()
            say('STOPPING')
            self.stop.set()

    def _down(self):
        self.downs.append(time.monotonic())
        _seen.clear()
        say('DOWN', len(self.downs))

    def _mark(self):
        self.marks.append(time.monotonic())
        say('MARKED', len(self.marks))
        for f in self.flows:
            f.rearm()

    def up_windows(self):
        """(start, end) of each time the killed part was back: from a mark to
        the next DOWN (or the stop)."""
        w = []
        for m in self.marks:
            nxt = [d for d in self.downs if d > m]
            w.append((m, nxt[0] if nxt else (self.stopped or time.monotonic())))
        return w

    async def pause(self, s):
        try:
            await asyncio.wait_for(self.stop.wait(), s)
        except asyncio.TimeoutError:
            pass


class Flow:
    """Tracks, per worker, whether a request sent after the last mark
    succeeded; prints FLOWING k once all have."""

    def __init__(self, ctl, workers):
        self.ctl = ctl
        self.workers = set(workers)
        self.left = set(workers)
        self.failed_marks = []    # marks after which not every worker succeeded
        ctl.flows.append(self)

    def rearm(self):
        if len(self.ctl.marks) > 1 and self.left:
            self.failed_marks.append((len(self.ctl.marks) - 1, sorted(self.left)[:6]))
        self.left = set(self.workers)

    def note(self, worker, r):
        if self.ctl.mark is not None and r.outcome == 'ok' and r.t0 >= self.ctl.mark and worker in self.left:
            self.left.discard(worker)
            if not self.left:
                say('FLOWING', len(self.ctl.marks))

    def all_flowed(self):
        return not self.left and not self.failed_marks


def summarize(reqs):
    c = collections.Counter('%s:%s' % (r.kind.split(':')[0], r.outcome) for r in reqs)
    return ', '.join('%s=%d' % kv for kv in sorted(c.items()))


def svc_ids(path, kind):
    """Ids (WS correlation ids, HTTP paths) of what a svc.py instance was given."""
    out = set()
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(kind + ' '):
                    try:
                        j = json.loads(line[len(kind) + 1:])
                    except ValueError:
                        continue
                    out.add(j.get('id') if kind == 'INBOUND' else j.get('path'))
    except OSError:
        pass
    return out


# ---------------------------------------------------------------- svckill
async def svckill(a):
    """Persistent WebSocket clients (all in room "all") and keep-alive HTTP
    clients send requests without pause while the driving script kills the
    service and starts it again. Every request must be answered (ok, or
    SERVICE_UNAVAILABLE / 503) within --bound; no WebSocket connection may be
    lost; after the mark every worker must succeed again; at the end a push to
    the room must reach every member."""
    ctl = Control()
    url = 'ws://127.0.0.1:%d%s' % (a.port, a.ws)
    clients = [WsClient('w%d' % i, url) for i in range(a.clients)]
    try:
        await asyncio.gather(*(c.connect(a.bound) for c in clients))
    except Exception as e:  # noqa: BLE001
        check('%d WebSocket clients connect' % a.clients, False, repr(e))
        return
    joins = await asyncio.gather(*(c.request('do.join', {'room': 'all'}, a.bound) for c in clients))
    who = await asyncio.gather(*(c.request('whoami', None, a.bound) for c in clients))
    for c, w in zip(clients, who):
        c.conn_id = (w.detail or {}).get('conn') if w.outcome == 'ok' else None
    if not check('%d WebSocket clients connected, each joined room "all"' % a.clients,
                 all(j.outcome == 'ok' and (j.detail or {}).get('ok') for j in joins) and all(c.conn_id for c in clients),
                 [j for j in joins if j.outcome != 'ok'][:3]):
        return
    say('CONNECTED', json.dumps([c.conn_id for c in clients]))
    reqs = []
    workers = ['%s.echo' % c.tag for c in clients] + ['%s.later' % c.tag for c in clients] + \
              ['h%d' % i for i in range(a.http)] + ['%s.flood' % clients[0].tag]
    flow = Flow(ctl, workers)

    def record(worker, r):
        reqs.append(r)
        flow.note(worker, r)
        if r.outcome == 'unavailable':
            seen('http-503' if r.kind == 'http' else 'ws-unavailable')
        elif r.outcome != 'ok':
            seen(r.outcome)

    async def ws_worker(c, kind):
        n = 0
        while not ctl.stop.is_set():
            n += 1
            if kind == 'flood':
                # big pushes: the service is often killed in the middle of a frame
                r = await c.request('do.flood', {'n': 4, 'size': 100000}, a.bound, kind='flood')
                record(c.tag + '.flood', r)
                await ctl.pause(a.pause)
            elif kind == 'echo':
                r = await c.request('echo', {'n': n}, a.bound)
                record(c.tag + '.echo', r)
                await ctl.pause(a.pause)
            else:
                r = await c.request('do.later', {'ms': a.later, 'data': {'n': n}}, a.bound, kind='later')
                record(c.tag + '.later', r)
                if r.outcome != 'ok':
                    await ctl.pause(a.pause)
            if r.outcome == 'lost':
                return

    seq = itertools.count(1)

    async def http_worker(i):
        h = HttpClient('h%d' % i, '127.0.0.1', a.port)
        while not ctl.stop.is_set():
            n = next(seq)
            q = '?sleep=%d' % a.later if n % 2 else ''
            r = await h.get('%s/%d%s' % (a.http_prefix, n, q), a.bound, kind='http')
            r.id = '%s/%d' % (a.http_prefix, n)
            record('h%d' % i, r)
            if not q or r.outcome != 'ok':
                await ctl.pause(a.pause)
        h.aclose()

    tasks = [asyncio.ensure_future(ws_worker(c, k)) for c in clients for k in ('echo', 'later')] + \
            [asyncio.ensure_future(http_worker(i)) for i in range(a.http)] + \
            [asyncio.ensure_future(ws_worker(clients[0], 'flood'))]
    await asyncio.wait_for(ctl.stop.wait(), a.max_time)
    # every worker ends within one bound: a request never waits longer
    done, notdone = await asyncio.wait(tasks, timeout=a.bound + 2)
    check('every worker finished within %.0f s of the stop' % (a.bound + 2), not notdone, '%d still waiting' % len(notdone))

    bad = [r for r in reqs if r.outcome not in ('ok', 'unavailable')]
    slow = [r for r in reqs if r.t1 is not None and r.t1 - r.t0 > a.bound]
    check('every request answered within %.0f s with ok or SERVICE_UNAVAILABLE/503 (%d requests: %s)'
          % (a.bound, len(reqs), summarize(reqs)), not bad and not slow, (bad + slow)[:4])
    fl_ok = sum(1 for r in reqs if r.kind == 'flood' and r.outcome == 'ok')
    check('big pushes: every flood answered ok had its 4 pushes delivered (%d floods ok, %d pushes)'
          % (fl_ok, clients[0].floods), fl_ok > 0 and clients[0].floods >= 4 * fl_ok, fl_ok)
    check('no WebSocket connection lost (%d open)' % a.clients, all(c.is_open for c in clients),
          ['%s closed %s' % (c.tag, c.close) for c in clients if not c.is_open][:4])
    imm = []
    for k, path in enumerate(a.svc_out, 1):
        # What a killed instance had been given and never answered: the
        # requests that were in flight at its kill.
        fwd_ws = svc_ids(path, 'INBOUND')
        fwd_http = svc_ids(path, 'HTTP')
        ws_inflight = [r for r in reqs if r.kind == 'later' and r.id in fwd_ws and r.outcome == 'unavailable']
        http_inflight = [r for r in reqs if r.kind == 'http' and r.id in fwd_http and r.outcome == 'unavailable']
        check('kill %d: WebSocket requests in flight answered SERVICE_UNAVAILABLE (%d)' % (k, len(ws_inflight)),
              len(ws_inflight) > 0, 'none of the requests the killed instance had were answered SERVICE_UNAVAILABLE')
        check('kill %d: HTTP requests in flight answered 503 (%d)' % (k, len(http_inflight)),
              len(http_inflight) > 0, 'none of the requests the killed instance had were answered 503')
        imm += [r for r in ws_inflight + http_inflight if r.t1 - r.t0 > a.later / 1000.0 + 2 * a.slow]
    if a.svc_out:
        check('... at once, not after a timeout', not imm, imm[:3])
    if ctl.marks:
        win = ctl.up_windows()
        # sent after a re-registration and settled before the next kill
        after = [r for r in reqs if r.t1 is not None and any(s <= r.t0 and r.t1 < e for s, e in win)]
        check('after each re-registration (%d) every worker succeeded again (%d requests: %s)' % (len(win), len(after), summarize(after)),
              flow.all_flowed(), 'no success for %s' % (flow.failed_marks or sorted(flow.left)[:6]))
        check('after each re-registration every request succeeded until the next kill',
              all(r.outcome == 'ok' for r in after), [r for r in after if r.outcome != 'ok'][:3])
    # rooms: a push to the room reaches every member
    token = 'check-%d' % os.getpid()
    trig = await clients[0].request('do.emit', {'room': 'all', 'event': 'room.check', 'data': token}, a.bound)
    got = await asyncio.gather(*(c.wait_push(lambda m: isinstance(m, dict) and m.get('type') == 'room.check'
                                             and m.get('data') == token, a.bound) for c in clients))
    n = sum(1 for m in got if m is not None)
    check('after the restart a push to the room reaches every member (%d/%d)' % (n, len(clients)),
          trig.outcome == 'ok' and n == len(clients), trig)
    await asyncio.gather(*(c.aclose() for c in clients))


# ---------------------------------------------------------------- linkdkill
async def linkdkill(a):
    """WebSocket clients on each --ws path and HTTP clients on each --http
    prefix send requests without pause; linkd is killed and started again.
    A request in flight at the kill fails at once (the connection drops),
    never hangs; clients reconnect (404 until the service has registered
    again is expected); after the mark every worker must succeed again."""
    ctl = Control()
    reqs, connect_errs = [], collections.Counter()
    reconnects = collections.Counter()
    workers = []
    for p in a.ws:
        workers += ['ws%s#%d' % (p, i) for i in range(a.clients)]
    for p in a.http:
        workers += ['http%s#%d' % (p, i) for i in range(a.http_clients)]
    flow = Flow(ctl, workers)

    def record(worker, r):
        reqs.append(r)
        flow.note(worker, r)
        if r.outcome != 'ok':
            seen(r.outcome)

    clients = []

    async def ws_worker(name, path):
        c = WsClient(name, 'ws://127.0.0.1:%d%s' % (a.port, path))
        clients.append(c)
        first = True
        n = 0
        while not ctl.stop.is_set():
            if not c.is_open:
                try:
                    await c.connect(a.bound)
                    if not first:
                        reconnects[name] += 1
                    first = False
                except Exception as e:  # noqa: BLE001 - refused, 404 before registration, ...
                    connect_errs[type(e).__name__ + ':' + re.sub(r'\d{4,}', 'N', str(e))[:60]] += 1
                    await ctl.pause(a.retry)
                    continue
            n += 1
            if path in a.slow_ws and n % 2:
                r = await c.request('do.later', {'ms': a.later, 'data': {'n': n}}, a.bound, kind='later')
            else:
                r = await c.request('echo', {'n': n}, a.bound)
            record(name, r)
            await ctl.pause(a.pause)

    async def http_worker(name, prefix):
        h = HttpClient(name, '127.0.0.1', a.port)
        n = 0
        while not ctl.stop.is_set():
            n += 1
            q = '?sleep=%d' % a.later if prefix in a.slow_http and n % 2 else ''
            r = await h.get('%s/%d%s' % (prefix, n, q), a.bound, kind='http-sleep' if q else 'http')
            record(name, r)
            await ctl.pause(a.pause if r.outcome == 'ok' else a.retry)
        h.aclose()

    tasks = []
    for p in a.ws:
        tasks += [asyncio.ensure_future(ws_worker('ws%s#%d' % (p, i), p)) for i in range(a.clients)]
    for p in a.http:
        tasks += [asyncio.ensure_future(http_worker('http%s#%d' % (p, i), p)) for i in range(a.http_clients)]

    async def connected():
        while not all(c.is_open for c in clients) or len(clients) < a.clients * len(a.ws):
            await asyncio.sleep(0.02)
    try:
        await asyncio.wait_for(connected(), a.bound * 2)
        say('CONNECTED', len(clients))
    except asyncio.TimeoutError:
        check('every WebSocket client connects', False, dict(connect_errs))
    await asyncio.wait_for(ctl.stop.wait(), a.max_time)
    done, notdone = await asyncio.wait(tasks, timeout=a.bound + 2)
    check('every worker finished within %.0f s of the stop' % (a.bound + 2), not notdone, '%d still waiting' % len(notdone))
    hang = [r for r in reqs if r.outcome == 'hang' or (r.t1 is not None and r.t1 - r.t0 > a.bound)]
    check('no request hung: each answered or failed within %.0f s (%d requests: %s)' % (a.bound, len(reqs), summarize(reqs)),
          not hang, hang[:4])
    # the slow ones (sitting in the service for --later ms) were surely in flight
    for kind, what in (('later', 'WebSocket'), ('http-sleep', 'HTTP')):
        if (kind == 'later' and a.slow_ws) or (kind == 'http-sleep' and a.slow_http):
            lost = [r for r in reqs if r.outcome == 'lost' and r.kind == kind and r.detail != 'not connected']
            check('%s requests in flight at the kill failed with the connection (%d)' % (what, len(lost)), len(lost) > 0,
                  'none did: %s' % summarize(reqs))
    # Before the service is back, HTTP routes answer 404 (unknown yet) or 503.
    odd = [r for r in reqs if r.outcome == 'other' and not str(r.detail).startswith(('404', '503'))]
    check('no answer other than ok, 404/503 (while the service is away) or a dropped connection', not odd, odd[:3])
    ws_names = [c.tag for c in clients]
    kills = max(1, len(ctl.downs))
    check('every WebSocket client reconnected after each restart (%d/%d clients, %d times)'
          % (sum(1 for n in ws_names if reconnects[n] >= kills), len(ws_names), kills),
          all(reconnects[n] >= kills for n in ws_names), (dict(reconnects), dict(connect_errs)))
    if ctl.marks:
        after = [r for r in reqs if r.t0 >= ctl.marks[0]]
        check('after each restart (%d) every client (each path and route) succeeded again (%d requests: %s)'
              % (len(ctl.marks), len(after), summarize(after)),
              flow.all_flowed(), 'no success for %s; connect errors %s' % (flow.failed_marks or sorted(flow.left)[:6], dict(connect_errs)))
    say('# connect attempts that failed while linkd or a service was away: %s' % dict(connect_errs))
    await asyncio.gather(*(c.aclose() for c in clients))


# ---------------------------------------------------------------- sigterm
async def sigterm(a):
    """Clients receive the pusher's numbered pushes and send echo requests
    (and HTTP clients requests with sleep) until linkd closes them. Writes a
    JSON report: per connection, every message in order and the close."""
    url = 'ws://127.0.0.1:%d%s' % (a.port, a.ws)
    clients = [WsClient('s%d' % i, url) for i in range(a.clients)]
    try:
        await asyncio.gather(*(c.connect(a.bound) for c in clients))
    except Exception as e:  # noqa: BLE001
        check('%d WebSocket clients connect' % a.clients, False, repr(e))
        return
    who = await asyncio.gather(*(c.request('whoami', None, a.bound) for c in clients))
    for c, w in zip(clients, who):
        c.conn_id = (w.detail or {}).get('conn') if w.outcome == 'ok' else None
    if not check('%d WebSocket clients connected' % a.clients, all(c.conn_id for c in clients), who[:3]):
        return
    say('CONNECTED', len(clients))
    http_reqs = []
    sent = collections.defaultdict(list)

    def pause_slow():
        # the last --slow-clients clients stop reading for --slow-for seconds
        for c in clients[len(clients) - a.slow_clients:]:
            c.ws.transport.pause_reading()
        say('PAUSED')
        asyncio.get_running_loop().call_later(a.slow_for, resume_slow)

    def resume_slow():
        for c in clients[len(clients) - a.slow_clients:]:
            try:
                c.ws.transport.resume_reading()
            except Exception:  # noqa: BLE001 - already closed
                pass
        say('RESUMED')
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, pause_slow)

    async def sender(c):
        n = 0
        while c.is_open:
            n += 1
            id = '%s-e%d' % (c.tag, n)
            sent[c.tag].append(id)
            try:
                await c.ws.send(json.dumps({'type': 'echo', 'data': {'n': n}, 'id': id}))
            except Exception:  # noqa: BLE001
                break
            await asyncio.sleep(a.pause)

    seq = itertools.count(1)

    async def http_worker(i):
        h = HttpClient('h%d' % i, '127.0.0.1', a.port)
        while any(c.is_open for c in clients):
            n = next(seq)
            r = await h.get('%s/%d?sleep=%d' % (a.http_prefix, n, a.later), a.bound)
            r.id = '%s/%d' % (a.http_prefix, n)
            http_reqs.append(r)
            if r.outcome == 'lost':
                await asyncio.sleep(0.05)
        h.aclose()

    async def traffic():
        while not all(any(isinstance(m, dict) and m.get('type') == 'seq' for m in c.msgs) and
                      any(isinstance(m, dict) and 'id' in m and 'type' not in m for m in c.msgs[1:]) for c in clients):
            await asyncio.sleep(0.05)
        say('TRAFFIC')
    tasks = [asyncio.ensure_future(sender(c)) for c in clients] + \
            [asyncio.ensure_future(http_worker(i)) for i in range(a.http)] + [asyncio.ensure_future(traffic())]
    # until every connection is closed by linkd (or the bound)
    end = time.monotonic() + a.max_time
    while any(c.is_open for c in clients) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    await asyncio.wait(tasks, timeout=a.bound + 2)
    for t in tasks:
        t.cancel()
    rep = {'clients': {}, 'http': [[r.id, r.outcome, r.detail if r.outcome == 'ok' else str(r.detail), r.t0, r.t1] for r in http_reqs]}
    for c in clients:
        rep['clients'][c.conn_id] = {'tag': c.tag, 'msgs': c.msgs, 'close': list(c.close) if c.close else None,
                                     'sent': sent[c.tag]}
    with open(a.report, 'w') as f:
        json.dump(rep, f)
    say('REPORTED')


def check_sigterm(a):
    """What every client received against what linkd acknowledged to the
    pusher (its ACK/PUSH/REPLY lines) before the stop (--t-stop)."""
    rep = json.load(open(a.report))
    pushes, acks, replies = {}, [], []
    shutdown_notice = None
    for line in open(a.pusher_out):
        k, _, rest = line.partition(' ')
        if k == 'PUSH':
            j = json.loads(rest); pushes[j['op']] = j
        elif k == 'ACK':
            acks.append(json.loads(rest))
        elif k == 'REPLY':
            replies.append(json.loads(rest))
        elif k == 'ERROR' and 'SHUTDOWN' in rest and shutdown_notice is None:
            shutdown_notice = time.monotonic()
    t_stop = a.t_stop
    ok_before = [x for x in acks if x['ok'] and x['t'] < t_stop]
    ok_all = [x for x in acks if x['ok']]
    refused = [x for x in acks if not x['ok']]
    clients = rep['clients']
    check('the pusher had pushes acknowledged before the stop (%d of %d pushes acked ok before, %d after, %d refused)'
          % (len(ok_before), len(pushes), len(ok_all) - len(ok_before), len(refused)),
          len(ok_before) >= a.min_acked, 'only %d' % len(ok_before))

    def received(cl):
        """(push numbers in order, reply ids, index of server.shutdown, messages after it)"""
        seqs, rids, sd, after = [], set(), None, []
        for i, m in enumerate(cl['msgs']):
            if sd is not None:
                after.append(m)
                continue
            if isinstance(m, dict) and m.get('type') == 'seq':
                seqs.append(m['data']['n'])
            elif isinstance(m, dict) and m.get('type') == 'server.shutdown':
                sd = i
            elif isinstance(m, dict) and 'id' in m and 'type' not in m:
                rids.add(m['id'])
        return seqs, rids, sd, after

    got = {cid: received(cl) for cid, cl in clients.items()}
    missing, disorder, missing_after = [], [], []
    for cid, cl in clients.items():
        # every push carries its op_id: a client gets them in op order
        ops = [m['data']['op'] for m in cl['msgs'] if isinstance(m, dict) and m.get('type') in ('seq', 'rseq')
               and isinstance(m.get('data'), dict) and 'op' in m['data']]
        if ops != sorted(ops) or len(set(ops)) != len(ops):
            disorder.append('%s: %s' % (cid, ops[:20]))
    have = {cid: set(v[0]) for cid, v in got.items()}
    have_r = {cid: set(m['data']['r'] for m in cl['msgs'] if isinstance(m, dict) and m.get('type') == 'rseq')
              for cid, cl in clients.items()}
    room_before = 0
    for x in ok_before:
        p = pushes.get(x['op'])
        if p and 'room' in p:
            room_before += 1
            for cid in clients:
                if p['r'] not in have_r[cid]:
                    missing.append('room push r%d (op %d) to %s' % (p['r'], x['op'], cid))
        elif p and p['n'] not in have.get(p['conn'], ()):
            missing.append('%s #%d (op %d)' % (p['conn'], p['n'], x['op']))
    for x in ok_all:
        p = pushes.get(x['op'])
        if x['t'] >= t_stop and p and 'conn' in p and p['n'] not in have.get(p['conn'], ()):
            missing_after.append('%s #%d (op %d, acked %.3f s after the stop)' % (p['conn'], p['n'], x['op'], x['t'] - t_stop))
    check('every push acknowledged before the stop reached its client(s), before server.shutdown (%d, %d of them to the room of all %d)'
          % (len(ok_before), room_before, len(clients)), not missing, '%d missing: %s' % (len(missing), missing[:5]))
    check('every client got its pushes in the order they were sent (room and own pushes interleaved), none twice',
          not disorder, disorder[:3])
    check('no push acknowledged ok after the stop began was dropped (%d acked after the stop)' % (len(ok_all) - len(ok_before)),
          not missing_after, '%d acknowledged ok but never delivered: %s' % (len(missing_after), missing_after[:4]))
    # Replies: linkd handles a link's frames in order, so a reply written
    # before a push that was acknowledged before the stop was handled before it.
    a_max = max((x['op'] for x in ok_before), default=0)
    must = [r for r in replies if r['next_op'] <= a_max]
    lost_r = ['%s %s' % (r['conn'], r['corr']) for r in must if r['corr'] not in got.get(r['conn'], ([], set()))[1]]
    check('every reply the service gave before an acknowledged push reached its client (%d)' % len(must),
          not lost_r and len(must) > 0, '%d missing: %s' % (len(lost_r), lost_r[:5]) if lost_r else 'no replies')
    sd_ok = [cid for cid, v in got.items() if v[2] is not None and not v[3]]
    check('every client got {"type":"server.shutdown"} as its last message (%d/%d)' % (len(sd_ok), len(got)),
          len(sd_ok) == len(got), ['%s: shutdown at %s, then %s' % (cid, v[2], v[3][:2]) for cid, v in got.items() if cid not in sd_ok][:3])
    codes = collections.Counter(str((cl['close'] or [None])[0]) for cl in clients.values())
    check('every client was closed with 1001 (%s)' % dict(codes), set(codes) == {'1001'}, dict(codes))
    # HTTP: what the service was given (in flight at the stop) is answered 200
    fwd = set()
    for line in open(a.pusher_out):
        if line.startswith('HTTP '):
            fwd.add(json.loads(line[5:])['path'])
    http = rep['http']
    inflight = [h for h in http if h[0] in fwd and h[3] < t_stop]
    bad = [h for h in inflight if h[1] != 'ok']
    check('HTTP requests the service had at the stop were answered 200 (%d)' % len(inflight), inflight and not bad,
          bad[:3] or 'none in flight')


def main():
    global NAME
    p = argparse.ArgumentParser()
    p.add_argument('mode', choices=['svckill', 'linkdkill', 'sigterm', 'check-sigterm'])
    p.add_argument('--name', default='fail_load')
    p.add_argument('--port', type=int)
    p.add_argument('--ws', action='append', default=[])
    p.add_argument('--http', action='append', default=[])
    p.add_argument('--http-prefix', default='')
    p.add_argument('--clients', type=int, default=10)
    p.add_argument('--http-clients', type=int, default=2)
    p.add_argument('--bound', type=float, default=5.0, help='seconds within which every request is settled')
    p.add_argument('--pause', type=float, default=0.02, help='seconds between requests of one worker')
    p.add_argument('--retry', type=float, default=0.1, help='seconds between reconnection attempts')
    p.add_argument('--later', type=int, default=300, help='ms the service sits on a "later" request')
    p.add_argument('--slow', type=float, default=1.0, help="T_SLOW: linkd's emulation factor")
    p.add_argument('--max-time', type=float, default=120.0)
    p.add_argument('--svc-out', action='append', default=[], help='svckill: output of each killed svc.py instance')
    p.add_argument('--report', default='')
    p.add_argument('--pusher-out', default='')
    p.add_argument('--t-stop', type=float, default=0.0)
    p.add_argument('--min-acked', type=int, default=50)
    p.add_argument('--slow-ws', action='append', default=[], help='linkdkill: paths whose service has do.later')
    p.add_argument('--slow-http', action='append', default=[], help='linkdkill: route prefixes that take ?sleep=')
    p.add_argument('--slow-clients', type=int, default=0, help='sigterm: clients that stop reading on SIGUSR2')
    p.add_argument('--slow-for', type=float, default=1.0, help='sigterm: ... for this many seconds')
    a = p.parse_args()
    NAME = a.name
    if a.mode == 'check-sigterm':
        check_sigterm(a)
        return
    if a.mode == 'svckill':
        a.ws = a.ws[0] if a.ws else '/ws/fk'
        a.http = a.http_clients
        fn = svckill
    elif a.mode == 'sigterm':
        a.ws = a.ws[0] if a.ws else '/ws/push'
        a.http = a.http_clients
        fn = sigterm
    else:
        fn = linkdkill
    asyncio.run(asyncio.wait_for(fn(a), a.max_time + 60))


if __name__ == '__main__':
    try:
        main()
    except asyncio.TimeoutError:
        check('the load run ends in time', False, 'overall bound passed')
    sys.exit(0)
