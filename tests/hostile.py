#!/usr/bin/python3
"""Hostile inputs for tests/t_harden*.sh (issue 8: one group per family of
defects A.1-A.16 and the behaviour that came with their fixes). Run with
/usr/bin/python3 (python3-protobuf, python3-cryptography).

    hostile.py GROUP --port P --socket S --pid PID [--tmp DIR] [--secret S]
                     [--log LINKD_LOG] [--svc-out MAIN_SVC_OUT] [--slow N] [--tag T]
    hostile.py makekeys DIR          # JWKS + tokens for the jwks group (before linkd starts)
    hostile.py idle_watch --port P   # a keep-alive connection left idle for 65 s

Each group prints PASS:/FAIL: lines ("PASS: t_harden: <tag><group>: <check>")
for what it can check itself, leaves nothing open behind it (every client and
service link it made is closed at the end), and can be run again and again
against the same linkd. Liveness, RSS and the gauges after a group are the
driver's (t_harden.sh).

The linkd the groups expect (t_harden.sh boots it):
  flags   --jwt-secret SECRET --jwt-keys TMP/jwks.json --max-outbound 256k
          --max-http-connections 20 --allowed-origins 'https://a.example,*'
  env     LINKD_MAX_HTTP_CONNECTIONS_PER_IP=5 LINKD_REGISTER_TIMEOUT=500ms
          (environment, so a linkd that predates them still starts)
  svc.py  hmain: --ws /ws, routes GET /items/:id, POST /up, GET|POST /private auth,
                 GET /users/:id auth, GET /users/stats, * /api/:x
          hauth: --ws /wsauth --ws-auth --max-per-user 1
          hsmall: --ws /wssmall --route 'POST /small' --max-inbound 32768

Client-side groups: ws_pings ws_fragments linger http_trailers http_framing
http_expect http_params http_local http_percap cors jwt jwks
Service-side groups: svc_headers svc_routes svc_push svc_register svc_inbound
Last (it stops linkd with SIGTERM): svc_shutdown
"""
import argparse, base64, hashlib, hmac, json, os, random, select, socket, struct, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'build'))
import linkd_pb2 as pb  # noqa: E402

A = None              # parsed arguments
R = random.Random(8)  # masks and keys only; nothing depends on its values
NAME = os.environ.get('HARDEN_NAME', 't_harden')
CLIENT_GROUPS = ['ws_pings', 'ws_fragments', 'linger', 'http_trailers', 'http_framing', 'http_expect',
                 'http_params', 'http_local', 'http_percap', 'cors', 'jwt', 'jwks']
SVC_GROUPS = ['svc_headers', 'svc_routes', 'svc_push', 'svc_register', 'svc_inbound']
LAST_GROUP = 'svc_shutdown'   # stops linkd
MiB = 1024 * 1024


# ---------------------------------------------------------------- reporting

def out(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def note(line):
    sys.stderr.write('# %s\n' % line)
    sys.stderr.flush()


def check(name, cond, why='failed'):
    pre = '%s%s: ' % (A.tag, A.group)
    if cond:
        out('PASS: %s: %s%s' % (NAME, pre, name))
    else:
        out('FAIL: %s: %s%s — %s' % (NAME, pre, name, str(why).replace('\n', ' ')[:400]))
    return bool(cond)


def slow(t):
    """A timeout scaled for valgrind/qemu (--slow, T_SLOW of lib.sh)."""
    return t * A.slow


# ---------------------------------------------------------------- process facts

def rss_kb(pid=None):
    try:
        with open('/proc/%d/status' % (pid or A.pid)) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive():
    try:
        os.kill(A.pid, 0)
        return True
    except OSError:
        return False


def log_text():
    try:
        with open(A.log, errors='replace') as f:
            return f.read()
    except (OSError, TypeError):
        return ''


def svc_text(path=None):
    try:
        with open(path or A.svc_out, errors='replace') as f:
            return f.read()
    except (OSError, TypeError):
        return ''


# ---------------------------------------------------------------- TCP and HTTP

def tcp(src=None, timeout=5.0, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if src:
        s.bind((src, 0))
    s.settimeout(slow(timeout))
    s.connect(('127.0.0.1', A.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def rst(s):
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class Resp:
    def __init__(self, status, head, body):
        self.status, self.head, self.body = status, head, body
        self.headers = []
        for line in head.split(b'\r\n')[1:]:
            k, _, v = line.partition(b':')
            self.headers.append((k.decode('latin-1').strip().lower(), v.decode('latin-1').strip()))

    def header(self, name):
        v = [b for a, b in self.headers if a == name.lower()]
        return v[0] if v else None

    def all(self, name):
        return [b for a, b in self.headers if a == name.lower()]

    def json(self):
        try:
            return json.loads(self.body.decode('utf-8'))
        except ValueError:
            return None

    def __repr__(self):
        return '<%s %r>' % (self.status, self.body[:120])


class Reader:
    """HTTP responses (Content-Length framed, 1xx without a body) off one socket."""

    def __init__(self, s):
        self.s, self.buf, self.closed, self.reset = s, b'', False, False

    def _fill(self, end):
        left = end - time.monotonic()
        if left <= 0 or self.closed:
            return False
        self.s.settimeout(left)
        try:
            d = self.s.recv(262144)
        except socket.timeout:
            return False
        except OSError:
            self.closed = self.reset = True
            return False
        if not d:
            self.closed = True
            return False
        self.buf += d
        return True

    def response(self, timeout=5.0, to_head=False):
        """The next response, or None (timeout, close). to_head: the answer to a HEAD (no body)."""
        end = time.monotonic() + slow(timeout)
        while True:
            if b'\r\n\r\n' in self.buf:
                head, rest = self.buf.split(b'\r\n\r\n', 1)
                try:
                    code = int(head.split(b' ')[1]) if head.startswith(b'HTTP/1.') else -1
                except (IndexError, ValueError):
                    code = -1
                cl = 0
                for line in head.split(b'\r\n')[1:]:
                    if line.lower().startswith(b'content-length:'):
                        try:
                            cl = int(line.split(b':', 1)[1])
                        except ValueError:
                            cl = 0
                if 100 <= code < 200 or code in (204, 304) or to_head:
                    cl = 0
                if len(rest) >= cl:
                    self.buf = rest[cl:]
                    return Resp(code, head, rest[:cl])
            if not self._fill(end):
                return None

    def wait_closed(self, timeout=3.0):
        end = time.monotonic() + slow(timeout)
        while not self.closed and self._fill(end):
            pass
        return self.closed


def http(method, path, headers=(), body=b'', src=None, timeout=5.0, version='HTTP/1.1', host=True):
    """One request on a fresh connection (Connection: close); the Resp or None."""
    req = '%s %s %s\r\n' % (method, path, version)
    if host:
        req += 'Host: x\r\n'
    for h in headers:
        req += h + '\r\n'
    if body:
        req += 'Content-Length: %d\r\n' % len(body)
    req += 'Connection: close\r\n\r\n'
    return raw(req.encode('latin-1') + body, src=src, timeout=timeout, head=method == 'HEAD')


def raw(data, src=None, timeout=5.0, head=False):
    try:
        s = tcp(src)
        s.sendall(data)
        r = Reader(s).response(timeout, head)
        s.close()
        return r
    except OSError as e:
        note('raw request: %s' % e)
        return None


def status(r):
    return r.status if r is not None else None


def health(src=None):
    r = http('GET', '/health', src=src, timeout=3)
    return r is not None and r.status == 200


def metric(name):
    r = http('GET', '/metrics')
    if r is None:
        return None
    for line in r.body.decode('latin-1').splitlines():
        p = line.split()
        if len(p) == 2 and p[0] == name:
            return int(float(p[1]))
    return None


def wait_until(fn, timeout=5.0, step=0.05):
    end = time.monotonic() + slow(timeout)
    while True:
        try:
            v = fn()
        except Exception:
            v = None
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


# ---------------------------------------------------------------- JWT

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()


def hs256(claims, header=None, secret=None):
    """A HS256 token; claims and header are dicts or raw JSON text (str/bytes)."""
    header = header if header is not None else {'alg': 'HS256', 'typ': 'JWT'}
    enc = lambda x: (x if isinstance(x, bytes) else x.encode() if isinstance(x, str) else json.dumps(x).encode())
    signing = b64u(enc(header)) + '.' + b64u(enc(claims))
    sig = hmac.new((secret or A.secret).encode(), signing.encode(), hashlib.sha256).digest()
    return signing + '.' + b64u(sig)


def later():
    return int(time.time()) + 3600


# ---------------------------------------------------------------- WebSocket (raw sockets)

def frame(payload, op=1, fin=True, mask=b'\x11\x22\x33\x44', length=None):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | op
    if n >= 65536:
        h = bytes([b0, 0x80 | 127]) + struct.pack('>Q', n)
    elif n >= 126:
        h = bytes([b0, 0x80 | 126]) + struct.pack('>H', n)
    else:
        h = bytes([b0, 0x80 | n])
    if mask == b'\x00\x00\x00\x00':
        return h + mask + payload
    m = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return h + mask + bytes(a ^ b for a, b in zip(payload, m)) if len(payload) < 4096 else \
        h + mask + (int.from_bytes(payload, 'big') ^ int.from_bytes(m, 'big')).to_bytes(len(payload), 'big')


def handshake_req(path, extra=()):
    key = base64.b64encode(R.randbytes(16)).decode()
    req = ('GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
           'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n' % (path, key))
    for h in extra:
        req += h + '\r\n'
    return (req + '\r\n').encode()


class WsRefused(OSError):
    def __init__(self, status, head):
        super().__init__('no 101: %s' % status)
        self.status, self.head = status, head


class Ws:
    def __init__(self, path='/ws', headers=(), src=None, rcvbuf=None, timeout=5.0):
        self.s = tcp(src, timeout, rcvbuf)
        self.s.sendall(handshake_req(path, headers))
        buf = b''
        end = time.monotonic() + slow(timeout)
        while b'\r\n\r\n' not in buf:
            self.s.settimeout(max(0.01, end - time.monotonic()))
            try:
                d = self.s.recv(4096)
            except socket.timeout:
                d = b''
            if not d:
                self.s.close()
                raise WsRefused(None, buf)
            buf += d
        head, rest = buf.split(b'\r\n\r\n', 1)
        st = head.split(b' ')[1] if b' ' in head else b''
        if st != b'101':
            self.s.close()
            raise WsRefused(int(st) if st.isdigit() else None, head)
        self.buf = rest
        self.closed = False
        self.close_code = None

    def send(self, b):
        self.s.sendall(b)

    def text(self, obj):
        self.s.sendall(frame(json.dumps(obj).encode()))

    def _fill(self, end):
        left = end - time.monotonic()
        if left <= 0 or self.closed:
            return False
        self.s.settimeout(left)
        try:
            d = self.s.recv(262144)
        except socket.timeout:
            return False
        except OSError:
            self.closed = True
            return False
        if not d:
            self.closed = True
            return False
        self.buf += d
        return True

    def frame(self, timeout=3.0):
        """The next server frame as (opcode, payload), or None."""
        end = time.monotonic() + slow(timeout)
        while True:
            b = self.buf
            if len(b) >= 2:
                n, hl = b[1] & 0x7f, 2
                if n == 126:
                    hl = 4
                    n = struct.unpack('>H', b[2:4])[0] if len(b) >= 4 else None
                elif n == 127:
                    hl = 10
                    n = struct.unpack('>Q', b[2:10])[0] if len(b) >= 10 else None
                if n is not None and len(b) >= hl + n:
                    op, p = b[0] & 0x0f, b[hl:hl + n]
                    self.buf = b[hl + n:]
                    if op == 8:
                        self.close_code = struct.unpack('>H', p[:2])[0] if len(p) >= 2 else 1005
                    return op, p
            if not self._fill(end):
                return None

    def data(self, timeout=3.0):
        """The next text/binary message (pongs and pings skipped), or None."""
        end = time.monotonic() + slow(timeout)
        while True:
            f = self.frame(max(0.01, (end - time.monotonic()) / A.slow))
            if f is None or f[0] == 8:
                return None
            if f[0] in (1, 2):
                return f

    def until_close(self, timeout=3.0):
        """Reads up to the server's close frame: its code (None: none came)."""
        end = time.monotonic() + slow(timeout)
        while time.monotonic() < end:
            f = self.frame(max(0.01, (end - time.monotonic()) / A.slow))
            if f is None:
                break
            if f[0] == 8:
                try:
                    self.s.sendall(frame(f[1][:2], op=8))
                except OSError:
                    pass
                return self.close_code
        return self.close_code

    def call(self, typ, data=None, timeout=5.0):
        cid = 'c%d' % R.randrange(1 << 30)
        env = {'type': typ, 'id': cid}
        if data is not None:
            env['data'] = data
        self.text(env)
        end = time.monotonic() + slow(timeout)
        while time.monotonic() < end:
            f = self.data(max(0.01, (end - time.monotonic()) / A.slow))
            if f is None:
                return None
            try:
                m = json.loads(f[1].decode('utf-8'))
            except ValueError:
                continue
            if isinstance(m, dict) and m.get('id') == cid:
                return m
        return None

    def close(self):
        try:
            self.s.sendall(frame(struct.pack('>H', 1000), op=8))
        except OSError:
            pass
        try:
            self.s.close()
        except OSError:
            pass

    def rst(self):
        rst(self.s)


def ws_status(path, headers=(), src=None):
    """101 or the refusal's status (the connection is closed either way)."""
    try:
        w = Ws(path, headers, src)
    except WsRefused as e:
        return e.status
    except OSError:
        return None
    w.close()
    return 101


# ---------------------------------------------------------------- service links

def varint(n):
    b = bytearray()
    while True:
        c = n & 0x7f
        n >>= 7
        if n:
            b.append(c | 0x80)
        else:
            b.append(c)
            return bytes(b)


def delimited(m):
    d = m.SerializeToString() if not isinstance(m, bytes) else m
    return varint(len(d)) + d


def split_frame(buf):
    n = shift = i = 0
    while i < len(buf):
        c = buf[i]
        i += 1
        n |= (c & 0x7f) << shift
        shift += 7
        if not c & 0x80:
            if len(buf) - i < n:
                break
            return buf[i:i + n], buf[i + n:]
    return None, buf


class Link:
    """A service link driven by hand (protobuf frames both ways)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(slow(3))
        self.s.connect(A.socket)
        self.buf = b''
        self.msgs = []
        self.eof = False

    def send(self, *msgs):
        self.s.sendall(b''.join(delimited(m) for m in msgs))

    def pump(self, timeout):
        """Reads what comes within timeout into self.msgs; False at EOF."""
        end = time.monotonic() + timeout
        while not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.s.settimeout(left)
            try:
                d = self.s.recv(1 << 20)
            except socket.timeout:
                break
            except OSError:
                d = b''
            if not d:
                self.eof = True
                break
            self.buf += d
            while True:
                f, self.buf = split_frame(self.buf)
                if f is None:
                    break
                m = pb.ServiceMessage()
                m.ParseFromString(f)
                self.msgs.append(m)
            if self.msgs:
                break
        return not self.eof

    def wait(self, pred, timeout=5.0):
        """The first received message for which pred is true (taken out), or None."""
        end = time.monotonic() + slow(timeout)
        while True:
            for i, m in enumerate(self.msgs):
                try:
                    hit = pred(m)
                except Exception:
                    hit = False
                if hit:
                    return self.msgs.pop(i)
            left = end - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self.pump(min(left, 0.2))

    def result(self, op_id, timeout=5.0):
        m = self.wait(lambda m: m.WhichOneof('message') == 'command_result' and m.command_result.op_id == op_id, timeout)
        return m.command_result if m else None

    def event(self, kind, timeout=5.0):
        m = self.wait(lambda m: m.WhichOneof('message') == 'ws_connection_event' and m.ws_connection_event.event_type == kind, timeout)
        return m.ws_connection_event if m else None

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def register(name, ws=None, raw=False, routes=(), instance=''):
    """A registered Link, or raises."""
    l = Link()
    m = pb.ServiceMessage()
    r = m.register_service
    r.name = name
    r.version = '1.0.0'
    r.instance_id = instance or '%s-%d' % (name, os.getpid())
    for meth, path in routes:
        rt = r.routes.add()
        rt.method, rt.path = meth, path
    if ws:
        r.websocket.enabled = True
        r.websocket.path = ws
        r.websocket.raw = raw
    l.send(m)
    res = l.wait(lambda m: m.WhichOneof('message') == 'register_result')
    if res is None or not res.register_result.ok:
        l.close()
        raise OSError('registration of %s failed: %r' % (name, res))
    return l


def pb_str(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def pb_int(field, v):
    return varint(field << 3) + varint(v)


def outbound_raw(conn=None, room=None, event=b'', payload=b'', op_id=0, binary=False, all_=False, except_=()):
    """A WebSocketOutbound ServiceMessage encoded by hand: python-protobuf
    refuses strings that are not UTF-8, linkd must refuse them itself."""
    o = b''
    if conn is not None:
        o += pb_str(1, conn.encode() if isinstance(conn, str) else conn)
    if room is not None:
        o += pb_str(2, room.encode())
    if all_:
        o += pb_int(3, 1)
    if event:
        o += pb_str(4, event)
    if payload:
        o += pb_str(5, payload)
    for e in except_:
        o += pb_str(6, e.encode())
    if binary:
        o += pb_int(7, 1)
    if op_id:
        o += pb_int(8, op_id)
    return pb_str(22, o)


# ---------------------------------------------------------------- svc.py processes

class SvcProc:
    """tests/svc.py as a subprocess: READY or REFUSED."""

    def __init__(self, *args):
        self.p = subprocess.Popen(['/usr/bin/python3', '-u', os.path.join(HERE, 'svc.py'), '--socket', A.socket] + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.lines = []
        self.state = None
        end = time.monotonic() + slow(10)
        while time.monotonic() < end:
            r, _, _ = select.select([self.p.stdout], [], [], 0.2)
            if not r:
                if self.p.poll() is not None:
                    break
                continue
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip('\n'))
            if line.startswith('READY') or line.startswith('REFUSED') or line.startswith('LINK_CLOSED'):
                self.state = line.rstrip('\n')
                break

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# ============================================================================
# Client-side groups
# ============================================================================

def g_ws_pings():
    """A.1: a client that floods pings and never reads. Pongs count against
    --max-outbound (256k here); linkd stops reading it while they are unread."""
    base = rss_kb()
    other = Ws('/ws')
    f = Ws('/ws', rcvbuf=4096)
    f.s.setblocking(False)
    batch = frame(b'p' * 125, op=9) * 64
    dur = 6.0 if A.slow == 1 else 20.0
    t0 = time.monotonic()
    sent = peak = 0
    stalled_at = None
    stalled = False
    last_rss = 0
    off = 0
    while time.monotonic() - t0 < dur:
        try:
            n = f.s.send(batch[off:])
            sent += n
            off = (off + n) % len(batch)
            stalled_at = None
        except BlockingIOError:
            now = time.monotonic()
            if stalled_at is None:
                stalled_at = now
            elif now - stalled_at >= 1.0 * A.slow:
                stalled = True
                break
            time.sleep(0.01)
        except OSError as e:
            note('ping flood: send failed: %s' % e)
            break
        if time.monotonic() - last_rss > 0.1:
            last_rss = time.monotonic()
            peak = max(peak, rss_kb())
            if peak - base > 64 * 1024 * A.rss_scale:
                break   # failed already: no need to take linkd to gigabytes
    peak = max(peak, rss_kb())
    grew = (peak - base) / 1024.0
    note('ping flood: %.1f MiB of pings sent in %.1f s, stalled %s, RSS %.1f -> peak %.1f MiB' %
         (sent / MiB, time.monotonic() - t0, stalled, base / 1024.0, peak / 1024.0))
    check('ping flood (125-byte pings, never read): the sends stall, linkd stopped reading',
          stalled, 'still sending after %.0f s: %.1f MiB of pings taken' % (dur, sent / MiB))
    check('ping flood: linkd RSS stays within %d MiB of where it was' % (8 * A.rss_scale), grew <= 8 * A.rss_scale,
          'RSS %.1f -> %.1f MiB' % (base / 1024.0, peak / 1024.0))
    r = other.call('echo', {'during': 'flood'})
    check('ping flood: another client still gets its echo', r and r.get('data') == {'during': 'flood'}, 'reply %r' % (r,))
    check('ping flood: /health answers during it', health())
    # The flooder drains what is queued: linkd reads it again. The rest of
    # the batch (the pings still in the client's send buffer) goes through
    # only if linkd resumes reading; once every pong is read, an envelope
    # gets its reply. (Sent after the drain: the pongs count against the
    # cap, so a reply queued behind a backlog of them could be over it, 1008.)
    f.s.setblocking(True)
    f.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    pongs = 0
    tail_done = threading.Event()

    def writer():
        try:
            f.s.sendall(batch[off:])
            tail_done.set()
        except OSError as e:
            note('ping flood: tail send: %s' % e)
    th = threading.Thread(target=writer, daemon=True)
    th.start()
    end = time.monotonic() + slow(20)
    quiet = 0
    while time.monotonic() < end and not f.closed:
        fr = f.frame(0.25)
        if fr is None:
            quiet += 1
            if tail_done.is_set() and quiet >= 2:
                break
            continue
        quiet = 0
        if fr[0] == 10:
            pongs += 1
        elif fr[0] == 8:
            break
    note('ping flood: %d pongs read after the client started reading (%.1f MiB of pings sent in all)' %
         (pongs, (sent + len(batch) - off) / MiB))
    check('ping flood: once the client reads, linkd reads the rest of its pings (its send buffer empties)',
          tail_done.is_set() and not f.closed, 'tail sent %s, closed %s (close code %s)' % (tail_done.is_set(), f.closed, f.close_code))
    got_reply = False
    if tail_done.is_set() and not f.closed:
        f.send(frame(json.dumps({'type': 'echo', 'id': 'after-flood', 'data': 1}).encode()))
        while not f.closed:
            fr = f.frame(5)
            if fr is None or fr[0] == 8:
                break
            if fr[0] == 1 and b'after-flood' in fr[1]:
                got_reply = True
                break
    check('ping flood: ... and then answers its messages again', got_reply,
          'no reply (closed %s, close code %s)' % (f.closed, f.close_code))
    f.rst()
    other.close()


def g_ws_fragments():
    """A.2: many connections each sending a text message as thousands of
    1-byte continuation frames, never finished: close 1009 past 128 fragments
    (64k limit), memory bounded."""
    n = 50 if A.slow == 1 else 20
    nfrag = 20000
    base = rss_kb()
    conns = []
    for i in range(n):
        try:
            conns.append(Ws('/ws'))
        except OSError as e:
            check('fragment flood: %d connections open' % n, False, e)
            break
    first = frame(b'a', op=1, fin=False)
    cont = frame(b'a', op=0, fin=False) * 1000
    peak = 0
    errors = 0
    lock = threading.Lock()

    def flood(w):
        nonlocal errors
        try:
            w.s.settimeout(slow(20))
            w.s.sendall(first)
            for _ in range(nfrag // 1000):
                w.s.sendall(cont)
        except OSError:
            with lock:
                errors += 1
    ths = [threading.Thread(target=flood, args=(w,), daemon=True) for w in conns]
    for t in ths:
        t.start()
    while any(t.is_alive() for t in ths):
        peak = max(peak, rss_kb())
        time.sleep(0.05)
    peak = max(peak, rss_kb())
    end = time.monotonic() + slow(5)   # one deadline for all: a linkd that never closes them costs 5 s, not 5 s each
    codes = [w.until_close(max(0.01, (end - time.monotonic()) / A.slow)) for w in conns]
    peak = max(peak, rss_kb())
    ok = sum(1 for c in codes if c == 1009)
    note('fragment flood: %d connections x %d fragments; RSS %.1f -> peak %.1f MiB; close codes %s; send errors %d' %
         (len(conns), nfrag, base / 1024.0, peak / 1024.0, sorted(set(map(str, codes))), errors))
    check('fragment flood: all %d connections closed 1009 (message in too many fragments)' % len(conns),
          ok == len(conns) and conns, '%d of %d got 1009; codes %s' % (ok, len(conns), sorted(set(map(str, codes)))))
    grew = (peak - base) / 1024.0
    check('fragment flood: RSS within %d MiB of where it was' % (16 * A.rss_scale), grew <= 16 * A.rss_scale,
          'RSS %.1f -> %.1f MiB' % (base / 1024.0, peak / 1024.0))
    # Under the cap a fragmented message still works (128 fragments of 1 byte... and one more the fin)
    w = Ws('/ws')
    msg = json.dumps({'type': 'echo', 'id': 'frag', 'data': 'x' * 100}).encode()
    parts = [msg[i:i + 1] for i in range(len(msg))][:100] + [msg[100:]]
    data = b''.join(frame(p, op=(1 if i == 0 else 0), fin=(i == len(parts) - 1)) for i, p in enumerate(parts))
    w.send(data)
    f = w.data(5)
    check('a message in 101 fragments (under the cap) is still answered', f and b'"frag"' in f[1], 'got %r' % (f,))
    w.close()
    for c in conns:
        c.rst()


def g_linger():
    """Lingering close: an over-limit message or body sent in one go, without
    reading, then read: the close frame / the 413 is not lost to a reset.
    Twice each: plain, and behind a backlog of answers the client has not
    read yet (a 4 KiB receive buffer), which a reset would throw away."""
    def ws_try(backlog):
        w = Ws('/ws', rcvbuf=4096 if backlog else None)
        try:
            w.s.settimeout(slow(10))
            if backlog:   # answered by linkd itself, in order: INVALID_MESSAGE errors
                w.s.sendall(frame(b'not json, and long enough to make a long error reply') * 100)
            w.s.sendall(frame(b'x' * (300 * 1024), op=1))
        except OSError as e:
            note('linger ws: send: %s' % e)
        w.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        errors = 0
        end = time.monotonic() + slow(5)
        while time.monotonic() < end:
            f = w.frame(max(0.01, (end - time.monotonic()) / A.slow))
            if f is None or f[0] == 8:
                break
            errors += f[0] == 1 and b'INVALID_MESSAGE' in f[1]
        w.rst()
        return w.close_code, errors

    def http_try(mode, backlog):
        s = tcp(rcvbuf=4096 if backlog else None)
        body = b'y' * (2 * MiB)
        pre = b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n' * (400 if backlog else 0)
        if mode == 'length':
            req = b'POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n' % len(body) + body
        else:
            req = b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' + \
                  b''.join(b'%x\r\n%s\r\n' % (65536, body[i:i + 65536]) for i in range(0, len(body), 65536)) + b'0\r\n\r\n'
        try:
            s.settimeout(slow(10))
            s.sendall(pre + req)
        except OSError as e:
            note('linger http %s: send: %s' % (mode, e))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rd = Reader(s)
        got = []
        while True:
            r = rd.response(5)
            if r is None:
                break
            got.append(r.status)
            if r.status != 200:
                break
        rst(s)
        return got
    for backlog in (False, True):
        res = [ws_try(backlog) for _ in range(3)]
        codes = [c for c, _ in res]
        check('300 KiB message sent in one go, then read%s: close frame 1009 arrives (3 tries)' %
              (' (100 error replies unread before it)' if backlog else ''),
              codes == [1009] * 3 and (not backlog or all(p == 100 for _, p in res)),
              'close codes %r, error replies %r (None: reset or no close frame)' % (codes, [p for _, p in res]))
        res = [http_try(mode, backlog) for mode in ('length', 'chunked')]
        want = [200] * (400 if backlog else 0) + [413]
        check('2 MiB body over the 1m limit sent in one go, then read%s: the 413 arrives (Content-Length, chunked)' %
              (' (400 answers unread before it)' if backlog else ''), res == [want, want],
              'statuses %r (None: reset or nothing)' % [(len(x), x[-1:]) for x in res])


def g_http_trailers():
    """A.3: chunked trailers never become request headers."""
    tok = hs256({'sub': 'trailer-user', 'exp': later()})
    ch = b'5\r\nhello\r\n0\r\n'
    r = raw(b'POST /private HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' + ch +
            b'Authorization: Bearer ' + tok.encode() + b'\r\n\r\n')
    check('Authorization only in a chunked trailer: 401 on an auth route', status(r) == 401, 'got %r' % (r,))
    r = raw(b'POST /private HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer ' + tok.encode() +
            b'\r\nConnection: close\r\n\r\n' + ch + b'\r\n')
    check('the same token in the header block: 200 (control)', status(r) == 200, 'got %r' % (r,))
    r = raw(b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' + ch +
            b'X-Forwarded-For: 6.6.6.6\r\nX-Trailer-Probe: yes\r\n\r\n')
    j = r.json() if r else None
    names = [h[0].lower() for h in j['headers']] if j else None
    check('X-Forwarded-For and other trailer fields never reach the service (request answered)',
          status(r) == 200 and names is not None and 'x-forwarded-for' not in names and 'x-trailer-probe' not in names
          and j.get('body') == 'hello',
          'status %s, headers the service saw %r' % (status(r), names))
    r = raw(b'GET /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nUpgrade: websocket\r\n'
            b'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
    check('handshake headers only in a trailer of a chunked GET: not upgraded', r is None or r.status != 101,
          'got %r' % (r,))
    big = b''.join(b'X-T%04d: %s\r\n' % (i, b'v' * 100) for i in range(200))   # ~21 KB of trailers
    r = raw(b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' + ch + big + b'\r\n')
    check('21 KB of trailers (over --max-header-size 16k): 431', status(r) == 431, 'got %r' % (r,))


def g_http_framing():
    """A.11: ambiguous framing refused (400 / 505)."""
    cases = [
        ('obs-fold in Transfer-Encoding', b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400),
        ('obs-fold in another header', b'GET /items/f HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n', 400),
        ('Transfer-Encoding: identity, chunked', b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400),
        ('two Transfer-Encoding headers', b'POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 400),
        ('HTTP/1.1 without Host', b'GET /items/f HTTP/1.1\r\nX-A: b\r\n\r\n', 400),
        ('two Host headers', b'GET /items/f HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400),
        ('a control character in a header value', b'GET /items/f HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\r\n\r\n', 400),
        ('HTTP/2.0 request line', b'GET /items/f HTTP/2.0\r\nHost: x\r\n\r\n', 505),
        ('HTTP/0.9 request line', b'GET /items/f HTTP/0.9\r\nHost: x\r\n\r\n', 505),
    ]
    for name, req, want in cases:
        s = tcp()
        s.sendall(req)
        rd = Reader(s)
        r = rd.response(5)
        closed = rd.wait_closed(3) if r is not None and r.status == 400 else True
        s.close()
        check('%s: %d%s' % (name, want, ' and closed' if want == 400 else ''), status(r) == want and closed,
              'got %r, closed %s' % (r, closed))
    r = raw(b'GET /items/ten HTTP/1.0\r\n\r\n')
    check('HTTP/1.0 without Host: 200', status(r) == 200, 'got %r' % (r,))


def g_http_expect():
    """A.12: Expect: 100-continue answered before the body is sent."""
    def head_then(path, extra=b'', body=b'hello', length=None):
        s = tcp()
        n = len(body) if length is None else length
        s.sendall(b'POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n%s\r\n' % (path.encode(), n, extra))
        rd = Reader(s)
        t0 = time.monotonic()
        first = rd.response(1.0)
        return s, rd, first, time.monotonic() - t0
    s, rd, first, dt = head_then('/up')
    check('Expect: 100-continue to a live route: "100 Continue" within 1 s, before the body',
          status(first) == 100, 'got %r after %.2f s' % (first, dt))
    s.sendall(b'hello')
    r = rd.response(5)
    j = r.json() if r else None
    check('... then the body is sent and answered 200', status(r) == 200 and j and j.get('body') == 'hello', 'got %r' % (r,))
    s.close()
    for name, path, extra, length, want in [
            ('unknown path', '/nowhere', b'', None, 404),
            ('auth route without a token', '/private', b'', None, 401),
            ('body over --max-body-size', '/up', b'', 2 * MiB, 413)]:
        s, rd, first, dt = head_then(path, extra, length=length)
        check('Expect: 100-continue, %s: %d at once, before any body' % (name, want), status(first) == want,
              'got %r after %.2f s' % (first, dt))
        s.close()
    s = tcp()
    s.sendall(b'POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: something-else\r\n\r\n')
    r = Reader(s).response(1.0)
    check('Expect: something-else: 417 at once', status(r) == 417, 'got %r' % (r,))
    s.close()


def g_http_params():
    """A.13: route parameters percent-decoded; raw path kept."""
    for raw_seg, want in [('abc', 'abc'), ('a%20b', 'a b'), ('a%2Fb', 'a/b'), ('%C3%A9', '\u00e9')]:
        r = http('GET', '/items/' + raw_seg)
        j = r.json() if r else None
        check('/items/%s: param id = %r, path kept as sent' % (raw_seg, want),
              status(r) == 200 and j and j['params'].get('id') == want and j['path'] == '/items/' + raw_seg
              and j['route'] == '/items/:id', 'got %s %r' % (status(r), j and (j.get('params'), j.get('path'), j.get('route'))))
    for bad in ['%zz', '%', '%00', '%C3', 'a%2', '%ff%fe']:
        r = http('GET', '/items/' + bad)
        check('/items/%s: 400' % bad, status(r) == 400, 'got %r' % (r,))


def g_http_local():
    """A.16: linkd's own endpoints answer other methods with 405 and Allow."""
    r = http('POST', '/health', body=b'x')
    check('POST /health: 405 with Allow: GET, HEAD', status(r) == 405 and r.header('allow') == 'GET, HEAD',
          'got %r allow %r' % (r, r and r.header('allow')))
    r = http('POST', '/metrics', body=b'x')
    check('POST /metrics: 405 with Allow: GET', status(r) == 405 and r.header('allow') == 'GET',
          'got %r allow %r' % (r, r and r.header('allow')))
    r = http('DELETE', '/health')
    check('DELETE /health: 405', status(r) == 405, 'got %r' % (r,))
    r = http('HEAD', '/health')
    check('HEAD /health: 200 (control)', status(r) == 200, 'got %r' % (r,))


def g_http_percap():
    """A.5: per-address cap for plain HTTP (5 here) and eviction of the
    longest-idle keep-alive connection when the table (20) is full."""
    def idle_conn(src):
        s = tcp(src)
        s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
        rd = Reader(s)
        return s, rd, rd.response(3)

    def still_open(s):
        s.setblocking(False)
        try:
            d = s.recv(4096)
            return False if not d else True   # bytes: an answer nobody asked for; count it as open
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            s.setblocking(True)
    # 1. one address, 30 idle keep-alive connections
    held = []
    answers = []
    most = 0
    open_now = []
    for i in range(30):
        try:
            s, rd, r = idle_conn('127.0.0.2')
        except OSError as e:
            answers.append('connect: %s' % e)
            continue
        held.append(s)
        answers.append(status(r))
        # an evicted connection is closed before the new one is even read,
        # so its FIN is here by the time the new one's answer is
        open_now = [x for x in held if still_open(x)]
        most = max(most, len(open_now))
    check('one address opens 30 idle keep-alive connections: each answered 200', answers == [200] * 30,
          'answers %r' % answers)
    check('... it never holds more than 5 of them (its older idle ones closed by linkd)',
          most <= 5 and len(open_now) == 5 and held[-1] in open_now,   # (idle times tie within a millisecond: which 4 others stay may vary)
          'up to %d open at once; the open ones at the end: %r' %
          (most, [held.index(x) for x in open_now]))
    check('... /health from another address answers 200 meanwhile', health())
    for s in held:
        s.close()
    wait_until(lambda: metric('linkd_http_connections') == 1, 5)
    # 2. the table filled by 4 addresses x 5 idle connections
    held = []
    for a in range(2, 6):
        for i in range(5):
            try:
                s, rd, r = idle_conn('127.0.0.%d' % a)
                held.append((s, rd))
            except OSError:
                pass
    s = tcp()
    s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
    r = Reader(s).response(3)
    check('table full of idle connections (4 addresses x 5): a new client gets /health 200', status(r) == 200, 'got %r' % (r,))
    st = ws_status('/ws')
    check('... and a WebSocket upgrade works (an idle one is evicted)', st == 101, 'status %r' % st)
    s.close()
    for x, _ in held:
        x.close()
    wait_until(lambda: metric('linkd_http_connections') == 1, 5)
    # 3. connections with a request in progress are never evicted
    busy = []
    nonce = b'%d' % R.randrange(1 << 30)

    def start_busy(a):
        for i in range(5):
            s = tcp('127.0.0.%d' % a)
            s.sendall(b'GET /items/busy-%s-%d?sleep=%d HTTP/1.1\r\nHost: x\r\n\r\n' % (nonce, a * 10 + i, int(1500 * A.slow)))
            busy.append(s)
        wait_until(lambda: svc_text().count('busy-%s-' % nonce.decode()) >= len(busy), 3)
    start_busy(6)
    r = http('GET', '/health', src='127.0.0.6')
    check('address at its cap with 5 requests in progress: a 6th connection gets 429', status(r) == 429, 'got %r' % (r,))
    for a in range(7, 10):
        start_busy(a)
    # (no /metrics meanwhile: the table is full, it would be refused)
    r = http('GET', '/health', src='127.0.0.1')
    check('table full of requests in progress: a new client gets 503', status(r) == 503, 'got %r' % (r,))
    got = [status(Reader(s).response(5)) for s in busy]
    check('... and none of the 20 in progress was evicted: all answered 200', got == [200] * 20, 'statuses %r' % got)
    for s in busy:
        s.close()
    wait_until(lambda: metric('linkd_http_connections') == 1, 5)
    # 4. a burst from one address: every connection is answered (200 or 429),
    # none dropped unanswered; a connection that has not sent its request yet
    # is not "idle" (not evicted for the next one)
    for label, pause in (('each with its request at once', 0), ('all opened first, then each sends its request', 0.3)):
        burst = [tcp('127.0.0.10') for _ in range(12)]
        time.sleep(pause)
        for s in burst:
            try:
                s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            except OSError:
                pass
        got = [status(Reader(s).response(3)) for s in burst]
        note('burst of 12 from one address (%s): %r' % (label, got))
        for s in burst:
            s.close()
        check('12 connections at once from one address, %s: each answered 200 or 429, none dropped' % label,
              all(g in (200, 429) for g in got) and got.count(200) >= 5, 'statuses %r (None: closed without an answer)' % got)
        wait_until(lambda: metric('linkd_http_connections') == 1, 5)


def g_cors():
    """A.10: '*' answers '*' without credentials; named origins are echoed with them."""
    def get(origin):
        return http('GET', '/items/cors', headers=['Origin: ' + origin])

    for o in ['https://x.example', 'null']:
        r = get(o)
        check('Origin %s under *: Access-Control-Allow-Origin: * without credentials' % o,
              status(r) == 200 and r.all('access-control-allow-origin') == ['*'] and r.header('access-control-allow-credentials') is None,
              'got %r ACAO %r ACAC %r' % (r, r and r.all('access-control-allow-origin'), r and r.header('access-control-allow-credentials')))
    r = get('https://a.example')
    check('a listed origin is echoed with credentials',
          status(r) == 200 and r.all('access-control-allow-origin') == ['https://a.example'] and
          r.header('access-control-allow-credentials') == 'true',
          'got %r ACAO %r ACAC %r' % (r, r and r.all('access-control-allow-origin'), r and r.header('access-control-allow-credentials')))
    for o, want, cred in [('https://x.example', '*', None), ('null', '*', None), ('https://a.example', 'https://a.example', 'true')]:
        r = http('OPTIONS', '/items/cors', headers=['Origin: ' + o, 'Access-Control-Request-Method: GET'])
        check('preflight from %s: Allow-Origin %s, credentials %s' % (o, want, cred or 'absent'),
              r is not None and 200 <= r.status < 300 and r.all('access-control-allow-origin') == [want] and
              r.header('access-control-allow-credentials') == cred,
              'got %r ACAO %r ACAC %r' % (r, r and r.all('access-control-allow-origin'), r and r.header('access-control-allow-credentials')))


def g_jwt():
    """A.6: claims refused rather than cut; exp/nbf numbers only; nothing
    after the claims; no repeated claim; no crit."""
    def get(tok, path='/private'):
        return http('GET', path, headers=['Authorization: Bearer ' + tok])

    def refused(name, claims, header=None):
        tok = hs256(claims, header)
        r = get(tok)
        r2 = get(tok, '/items/anon')
        j = r2.json() if r2 else None
        anon = j is not None and j['user']['authenticated'] is False and j['user']['user_id'] == ''
        check('%s: refused (401 on an auth route, anonymous on an open one)' % name, status(r) == 401 and status(r2) == 200 and anon,
              'auth route %s, open route %s user %r' % (status(r), status(r2), j and j.get('user')))
    e = later()
    r = get(hs256({'sub': 'ok-user', 'preferred_username': 'n' * 127, 'tenant_id': 't' * 127,
                   'roles': ['r%02d' % i + 'x' * 60 for i in range(16)], 'exp': e}))
    j = r.json() if r else None
    u = j and j['user']
    check('username and tenant of 127 bytes, 16 roles of 63 bytes: accepted whole',
          status(r) == 200 and u and u['username'] == 'n' * 127 and u['tenant_id'] == 't' * 127 and len(u['roles']) == 16
          and all(len(x) == 63 for x in u['roles']), 'got %s %r' % (status(r), u))
    refused('preferred_username of 128 bytes', {'sub': 'u', 'preferred_username': 'n' * 128, 'exp': e})
    refused('username of 128 bytes', {'sub': 'u', 'username': 'n' * 128, 'exp': e})
    refused('tenant_id of 128 bytes', {'sub': 'u', 'tenant_id': 't' * 128, 'exp': e})
    refused('a role of 64 bytes', {'sub': 'u', 'roles': ['a', 'r' * 64], 'exp': e})
    refused('17 roles', {'sub': 'u', 'roles': ['r%d' % i for i in range(17)], 'exp': e})
    # two subs that share their first 127 bytes are never one user: the per-user cap (1 on /wsauth)
    pre = 's' * 127
    ta, tb = hs256({'sub': pre + 'A', 'exp': e}), hs256({'sub': pre + 'B', 'exp': e})
    sa = sb = None
    wa = None
    try:
        wa = Ws('/wsauth', ['Authorization: Bearer ' + ta])
        sa = 101
    except WsRefused as x:
        sa = x.status
    sb = ws_status('/wsauth', ['Authorization: Bearer ' + tb])
    check('two subs sharing their first 127 bytes on a path capped at 1 per user: both refused 401 (not one user, no 429)',
          (sa, sb) == (401, 401), 'statuses %r, %r' % (sa, sb))
    if wa:
        wa.close()
    tc = hs256({'sub': 'cap-user', 'exp': e})
    wc = None
    try:
        wc = Ws('/wsauth', ['Authorization: Bearer ' + tc])
        s1 = 101
    except WsRefused as x:
        s1 = x.status
    s2 = ws_status('/wsauth', ['Authorization: Bearer ' + tc])
    check('control: the per-user cap of 1 holds (101, then 429)', (s1, s2) == (101, 429), 'statuses %r, %r' % (s1, s2))
    if wc:
        wc.close()
    for claim in ('exp', 'nbf'):
        for v in ['"nan"', 'true', 'null', '"123"', '[1]', '{}']:
            refused('%s: %s' % (claim, v), '{"sub":"u","%s":%s%s}' % (claim, v, '' if claim == 'exp' else ',"exp":%d' % e))
    refused('text after the claims object', '{"sub":"a","exp":%d} x' % e)
    refused('a second object after the claims', '{"sub":"a","exp":%d}{"sub":"b"}' % e)
    refused('a repeated claim (sub twice)', '{"sub":"a","sub":"b","exp":%d}' % e)
    refused('a repeated exp', '{"sub":"a","exp":%d,"exp":1}' % e)
    refused('a crit header', {'sub': 'a', 'exp': e}, {'alg': 'HS256', 'typ': 'JWT', 'crit': ['exp']})
    r = get(hs256({'sub': 'fine', 'exp': e, 'nbf': 1}))
    check('control: a plain token with numeric exp and nbf is accepted', status(r) == 200, 'got %r' % (r,))


def make_keys(d):
    """JWKS with RSA k1, k2, EC e1 (usable), RSA k3 "use":"enc", EC e2 "alg":"RS256",
    a bad JWKS, and the tokens the jwks group presents."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa, ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    ib = lambda i, n: i.to_bytes(n, 'big')
    keys = {k: rsa.generate_private_key(public_exponent=65537, key_size=2048) for k in ('k1', 'k2', 'k3')}
    keys.update({k: ec.generate_private_key(ec.SECP256R1()) for k in ('e1', 'e2')})

    def jwk(kid, extra=None):
        k = keys[kid].public_key().public_numbers()
        if kid.startswith('k'):
            j = {'kty': 'RSA', 'kid': kid, 'n': b64u(ib(k.n, 256)), 'e': b64u(ib(k.e, 3))}
        else:
            j = {'kty': 'EC', 'crv': 'P-256', 'kid': kid, 'x': b64u(ib(k.x, 32)), 'y': b64u(ib(k.y, 32))}
        j.update(extra or {})
        return j
    doc = {'keys': [jwk('k1', {'alg': 'RS256', 'use': 'sig'}), jwk('k2'), jwk('e1'), jwk('k3', {'use': 'enc'}),
                    jwk('e2', {'alg': 'RS256'})]}
    open(os.path.join(d, 'jwks.json'), 'w').write(json.dumps(doc))
    bad = {'keys': [jwk('k1'), {'kty': 'RSA', 'kid': 'broken', 'n': 'AAAA', 'e': 'AQAB'}]}
    open(os.path.join(d, 'jwks-bad.json'), 'w').write(json.dumps(bad))

    def tok(alg, signer, kid=None, sub='jwks-user'):
        h = {'alg': alg, 'typ': 'JWT'}
        if kid:
            h['kid'] = kid
        msg = (b64u(json.dumps(h).encode()) + '.' + b64u(json.dumps({'sub': sub, 'exp': int(time.time()) + 86400}).encode())).encode()
        k = keys[signer]
        if alg == 'RS256':
            sig = k.sign(msg, padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = decode_dss_signature(k.sign(msg, ec.ECDSA(hashes.SHA256())))
            sig = ib(r, 32) + ib(s, 32)
        return msg.decode() + '.' + b64u(sig)
    toks = {
        'k2_by_k2': tok('RS256', 'k2', 'k2'), 'k1_by_k2': tok('RS256', 'k2', 'k1'), 'nokid_by_k2': tok('RS256', 'k2'),
        'nokid_by_k1': tok('RS256', 'k1'), 'e1_by_e1': tok('ES256', 'e1', 'e1'), 'nokid_by_e1': tok('ES256', 'e1'),
        'k3_by_k3': tok('RS256', 'k3', 'k3'), 'nokid_by_k3': tok('RS256', 'k3'),
        'nokid_by_e2': tok('ES256', 'e2'), 'e2_by_e2': tok('ES256', 'e2', 'e2'), 'e1_by_e2': tok('ES256', 'e2', 'e1'),
    }
    json.dump(toks, open(os.path.join(d, 'tokens.json'), 'w'))


def g_jwks():
    """A.15: JWKS kid selection, use and alg honoured; a malformed key stops --check-config."""
    toks = json.load(open(os.path.join(A.tmp, 'tokens.json')))
    cases = [('kid k2, signed by k2', 'k2_by_k2', 200), ('kid k1 but signed by k2', 'k1_by_k2', 401),
             ('no kid, signed by k2 (RSA key tried by type)', 'nokid_by_k2', 200), ('no kid, signed by k1', 'nokid_by_k1', 200),
             ('ES256, kid e1, signed by e1', 'e1_by_e1', 200), ('ES256, no kid, signed by e1', 'nokid_by_e1', 200),
             ('ES256, kid e1 but signed by e2', 'e1_by_e2', 401),
             ('kid k3, a key with "use":"enc"', 'k3_by_k3', 401), ('no kid, signed by the "use":"enc" key', 'nokid_by_k3', 401),
             ('ES256 signed by an EC key whose "alg" is RS256 (no kid)', 'nokid_by_e2', 401),
             ('ES256 signed by an EC key whose "alg" is RS256 (its kid)', 'e2_by_e2', 401)]
    for name, t, want in cases:
        r = http('GET', '/private', headers=['Authorization: Bearer ' + toks[t]])
        check('%s: %d' % (name, want), status(r) == want, 'got %r' % (r,))
    cmd = os.environ.get('LINKD_CMD', os.path.join(HERE, '..', 'linkd')).split()
    bad = os.path.join(A.tmp, 'jwks-bad.json')
    try:
        p = subprocess.run(cmd + ['--jwt-keys', bad, '--check-config', '--socket', os.path.join(A.tmp, 'cc.sock')],
                           capture_output=True, text=True, timeout=slow(30))
        rc, msg = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired:
        rc, msg = 'timeout', ''
    check('a JWKS with a malformed key (the 2nd): --check-config exits 2 naming the file and key 2',
          rc == 2 and bad in msg and 'key 2' in msg, 'exit %s: %s' % (rc, msg.strip()[-300:]))


# ============================================================================
# Service-side groups
# ============================================================================

def g_svc_headers():
    """A.4: a bad response header fails that one request (502); the link and
    the other requests in flight are untouched; headers linkd owns are dropped."""
    from urllib.parse import quote
    ready0 = svc_text().count('READY')
    gone0 = log_text().count(' gone')
    # a request in flight on the same link while the bad answers come
    slow_s = tcp()
    slow_s.sendall(b'GET /items/inflight?sleep=%d HTTP/1.1\r\nHost: x\r\n\r\n' % int(1000 * A.slow))
    wait_until(lambda: 'inflight' in svc_text(), 3)
    bad = [('X-A', 'a\r\nInjected: 1'), ('X-A', 'a\nb'), ('X-A', 'a\rb'), ('X-A', 'a\x00b'), ('Transfer-Encoding\t', 'chunked'),
           ('X A', '1'), ('', 'empty name'), ('X:A', '1'), ('X-A\r\nInjected', '1'), ('X\u00e9', '1')]
    got = []
    for n, v in bad:
        r = http('GET', '/items/h?hname=%s&hvalue=%s' % (quote(n, safe=''), quote(v, safe='')))
        got.append(status(r))
        inj = r is not None and r.header('injected') is not None
        check('service header %r: %r: 502 for that request' % (n, v), status(r) == 502 and not inj, 'got %r%s' % (r, ' (header injected!)' if inj else ''))
    r = Reader(slow_s).response(5)
    slow_s.close()
    check('a request in flight on the same link meanwhile: answered 200', status(r) == 200, 'got %r' % (r,))
    r = http('GET', '/items/after')
    check('the service still answers through linkd afterwards', status(r) == 200, 'got %r' % (r,))
    st = svc_text()
    check('the link stayed: no re-registration, no LINK_CLOSED, no "gone" in linkd\'s log',
          st.count('READY') == ready0 and 'LINK_CLOSED' not in st and log_text().count(' gone') == gone0,
          'READY %d -> %d, LINK_CLOSED %s, gone %d -> %d' % (ready0, st.count('READY'), 'LINK_CLOSED' in st, gone0, log_text().count(' gone')))
    # headers linkd owns are dropped; the connection's framing stays linkd's
    owned = [('Content-Length', '99999'), ('Transfer-Encoding', 'chunked'), ('Connection', 'close'), ('Upgrade', 'h2c'),
             ('Keep-Alive', 'timeout=1'), ('content-length', '1')]
    q = '&'.join('hname=%s&hvalue=%s' % (quote(n), quote(v)) for n, v in owned) + '&hname=X-Custom&hvalue=kept'
    s = tcp()
    s.sendall(b'GET /items/owned?%s HTTP/1.1\r\nHost: x\r\n\r\n' % q.encode())
    rd = Reader(s)
    r = rd.response(5)
    cl = r.all('content-length') if r else None
    check('Content-Length, Transfer-Encoding, Connection, Upgrade, Keep-Alive from a service are dropped (X-Custom kept)',
          status(r) == 200 and cl == [str(len(r.body))] and r.header('transfer-encoding') is None and r.header('upgrade') is None
          and r.header('keep-alive') is None and (r.header('connection') or '').lower() != 'close' and r.header('x-custom') == 'kept'
          and r.json() is not None,
          'got %r, headers %r' % (r, r and r.headers))
    s.sendall(b'GET /items/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    r = rd.response(5)
    check('... and the connection stays usable (keep-alive)', status(r) == 200, 'got %r' % (r,))
    s.close()


def g_svc_routes():
    """A.7: routes overlapping another service's are refused at registration."""
    tok = hs256({'sub': 'route-user', 'exp': later()})
    procs = []
    try:
        for label, route in [('GET /users/me', 'GET /users/me'), ('GET /api/:x', 'GET /api/:x'), ('POST /api/v1', 'POST /api/v1'),
                             ('* /users/:y', '* /users/:y')]:
            p = SvcProc('--name', 'hcapture', '--route', 'GET /capture-ok/:n', '--route', route)
            procs.append(p)
            st = p.state or ''
            check('service B registering %s over service A\'s routes: REFUSED, naming the conflict' % label,
                  st.startswith('REFUSED') and 'conflict' in st and 'hmain' in st, 'got %r' % (st or p.lines[-3:]))
            p.stop()
        p = SvcProc('--name', 'hcapture', '--route', 'GET /capture-ok/:n', '--route', 'GET /users/me/settings',
                    '--route', 'GET /apix/:x')
        procs.append(p)
        check('service B with routes that do not overlap registers', (p.state or '').startswith('READY'), 'got %r' % (p.state or p.lines[-3:]))
        r = http('GET', '/capture-ok/1')
        check('... and gets its own requests', status(r) == 200 and r.json() and r.json()['service'] == 'hcapture', 'got %r' % (r,))
        r = http('GET', '/users/me', headers=['Authorization: Bearer ' + tok])
        j = r.json() if r else None
        check('GET /users/me goes to service A\'s /users/:id (its auth applies)',
              status(r) == 200 and j and j['service'] == 'hmain' and j['route'] == '/users/:id', 'got %r' % (r,))
        r = http('GET', '/users/me')
        check('... without a token: 401', status(r) == 401, 'got %r' % (r,))
        r = http('GET', '/users/stats')
        j = r.json() if r else None
        check('within one service /users/stats beats /users/:id (no token needed)',
              status(r) == 200 and j and j['route'] == '/users/stats', 'got %r' % (r,))
    finally:
        for p in procs:
            p.stop()


def g_svc_push():
    """A.8: payloads validated in full (past any token pool); event names and
    raw text UTF-8; CommandResult NOT_DELIVERED and delivered counts."""
    env = register('hpush', ws='/push')
    rawl = register('hpushraw', ws='/pushraw', raw=True)
    clients = []
    try:
        a = Ws('/push')
        clients.append(a)
        ev = env.event(pb.WebSocketConnectionEvent.CONNECTED)
        ca = ev.connection_id if ev else ''
        op = [100]

        def push(link, payload, event=b'ev', conn=None, binary=False, room=None, all_=False, except_=()):
            op[0] += 1
            frame_ = outbound_raw(conn=conn, room=room, event=event, payload=payload, op_id=op[0],
                                  binary=binary, all_=all_, except_=except_)
            link.s.sendall(varint(len(frame_)) + frame_)
            return link.result(op[0], 10)
        zeros = b'[' + b'0,' * 99999 + b'0]'
        for name, payload in [('100k zeros then ,"type":"admin"', zeros + b',"type":"admin"'),
                              ('a valid-looking prefix of 100k tokens and a bad tail', b'{"a":' + zeros + b',"b":}'),
                              ('100k tokens then an unclosed array', b'[' + b'0,' * 100000 + b'[')]:
            r = push(env, payload, conn=ca)
            check('push with %s: refused BAD_MESSAGE' % name,
                  r is not None and not r.ok and r.error.type == 'BAD_MESSAGE', 'result %r' % (r,))
        r = push(env, b'{"x":1}', event=b'ev\xff\xfe', conn=ca)
        check('push with an event name that is not UTF-8: refused BAD_MESSAGE', r is not None and not r.ok and r.error.type == 'BAD_MESSAGE',
              'result %r' % (r,))
        r = push(env, zeros, event=b'big', conn=ca)
        check('a valid payload of 100k tokens: delivered (ok)', r is not None and r.ok, 'result %r' % (r,))
        f = a.data(10)
        m = None
        try:
            m = json.loads(f[1]) if f else None
        except ValueError:
            pass
        check('... and the client\'s first message is that one: nothing of the refused pushes reached it',
              isinstance(m, dict) and m.get('type') == 'big' and isinstance(m.get('data'), list) and len(m['data']) == 100000,
              'first message %r' % (f and f[1][:120],))
        # raw path: text must be UTF-8, binary anything
        rc = Ws('/pushraw')
        clients.append(rc)
        ev = rawl.event(pb.WebSocketConnectionEvent.CONNECTED)
        cr = ev.connection_id if ev else ''
        r = push(rawl, b'\xff\xfe not utf-8', event=b'', conn=cr)
        check('raw path: a text push that is not UTF-8 is refused BAD_MESSAGE', r is not None and not r.ok and r.error.type == 'BAD_MESSAGE',
              'result %r' % (r,))
        r = push(rawl, b'\xff\xfe binary', event=b'', conn=cr, binary=True)
        f = rc.data(5)
        check('raw path: the same bytes as binary are delivered', r is not None and r.ok and f == (2, b'\xff\xfe binary'),
              'result %r, client got %r' % (r, f))
        # delivered counts and NOT_DELIVERED
        b = Ws('/push')
        clients.append(b)
        cb = env.event(pb.WebSocketConnectionEvent.CONNECTED).connection_id
        c = Ws('/push')
        clients.append(c)
        cc = env.event(pb.WebSocketConnectionEvent.CONNECTED).connection_id
        for x in (ca, cb, cc):
            m = pb.ServiceMessage()
            m.ws_room_operation.connection_id = x
            m.ws_room_operation.room = 'hroom'
            op[0] += 1
            m.ws_room_operation.op_id = op[0]
            env.send(m)
            env.result(op[0])
        r = push(env, b'{"n":1}', event=b'room.msg', room='hroom')
        check('room push to 3 members: CommandResult ok, delivered = 3', r is not None and r.ok and r.delivered == 3, 'result %r' % (r,))
        r = push(env, b'{"n":2}', event=b'all.msg', all_=True, except_=(cb,))
        check('push to everyone minus one (3 connections): delivered = 2', r is not None and r.ok and r.delivered == 2, 'result %r' % (r,))
        close = pb.ServiceMessage()
        close.close_connection.connection_id = cc
        close.close_connection.code = 4000
        op[0] += 1
        close.close_connection.op_id = op[0]
        cop = op[0]
        op[0] += 1
        env.s.sendall(delimited(close) + delimited(outbound_raw(conn=cc, event=b'late', payload=b'1', op_id=op[0])))
        rclose, r = env.result(cop), env.result(op[0])
        check('push to a connection the service just closed: NOT_DELIVERED (410), not ok',
              r is not None and not r.ok and r.error.type == 'NOT_DELIVERED' and r.error.code == 410,
              'close result %r, push result %r' % (rclose, r))
        got = []
        while True:
            fr = c.frame(3)
            if fr is None or fr[0] == 8:
                break
            got.append(fr)
        check('... and that client never gets it (close 4000 follows what was queued)', c.close_code == 4000 and
              not any(b'late' in x[1] for x in got), 'close %r, frames %r' % (c.close_code, got[:3]))
        r = push(env, b'1', event=b'x', conn='99999.1')
        check('push to an unknown connection: NOT_FOUND (control)', r is not None and not r.ok and r.error.type == 'NOT_FOUND', 'result %r' % (r,))
    finally:
        for w in clients:
            w.rst()
        env.close()
        rawl.close()


def g_svc_register():
    """A.9: a link that never registers is closed after --register-timeout (500ms)."""
    n0 = log_text().count('no RegisterService')
    t0 = time.monotonic()
    links = []
    for payload in [b'', varint(50) + b'\x0a\x05hal']:   # silent; half a RegisterService
        l = Link()
        if payload:
            l.s.sendall(payload)
        links.append(l)
    closed = []
    for l in links:
        end = time.monotonic() + slow(4)
        while not l.eof and time.monotonic() < end:
            l.pump(end - time.monotonic())
        closed.append((l.eof, round(time.monotonic() - t0, 2)))
        l.close()
    check('a link that connects and never registers is closed (500ms deadline) within 3 s',
          closed[0][0] and closed[0][1] <= 3 * A.slow, 'closed %r after %.1f s' % (closed[0][0], closed[0][1]))
    check('a link that sent half a RegisterService is closed too', closed[1][0], 'still open after 4 s')
    wait_until(lambda: log_text().count('no RegisterService') >= n0 + 2, 2)
    check('linkd\'s log names it (no RegisterService within --register-timeout)', log_text().count('no RegisterService') >= n0 + 2,
          'log lines: %r' % [l for l in log_text().splitlines() if 'service link' in l][-3:])
    l = register('hlate')
    time.sleep(1.5 * A.slow)
    l.send(pb.ServiceMessage(heartbeat=pb.Heartbeat(timestamp_ms=1)))
    ok = l.wait(lambda m: m.WhichOneof('message') == 'heartbeat', 3) is not None
    check('a registered link is not closed by the deadline (heartbeat answered after 1.5 s)', ok and not l.eof, 'eof %s' % l.eof)
    l.close()


def g_svc_inbound():
    """A.14: a service that declares max_inbound_frame_bytes (32768: hsmall)
    is never sent a bigger frame; the link stays."""
    small_txt = lambda: svc_text(A.svc_small)
    ready0 = small_txt().count('READY')
    w = Ws('/wssmall')
    r = w.call('echo', 'x' * 1000)
    check('a small message to the 32k service: echoed (control)', r is not None and r.get('data') == 'x' * 1000, 'got %r' % (r and str(r)[:100],))
    w.text({'type': 'echo', 'id': 'big', 'data': 'y' * 20000})
    code = w.until_close(5)
    check('a 20 KB message to a service that reads frames of 32k at most (16k for the message): close 1009', code == 1009,
          'close code %r' % code)
    w.rst()
    w = Ws('/wssmall')
    w.text({'type': 'echo', 'id': 'big', 'data': 'z' * 40000})
    code = w.until_close(5)
    check('a 40 KB message (over its frame limit): close 1009', code == 1009, 'close code %r' % code)
    w.rst()
    r = http('POST', '/small', body=b'b' * 40000)
    check('an HTTP request of 40 KB to it: 413', status(r) == 413, 'got %r' % (r,))
    r = http('POST', '/small', body=b'b' * 20000)
    check('an HTTP request of 20 KB (fits): 200', status(r) == 200, 'got %r' % (r,))
    txt = small_txt()
    check('the service never saw the big ones, and its link stayed',
          'LINK_CLOSED' not in txt and txt.count('READY') == ready0 and 'DECODE_ERROR' not in txt and 'z' * 100 not in txt
          and 'y' * 100 not in txt, 'READY %d -> %d, LINK_CLOSED %s' % (ready0, txt.count('READY'), 'LINK_CLOSED' in txt))


def g_svc_shutdown():
    """During linkd's SIGTERM, a push to a connection that is closing is
    answered NOT_DELIVERED (410), not ok. This group stops linkd (SIGTERM):
    the driver runs it last and checks the exit status."""
    import signal
    l = register('hdown', ws='/down')
    w = Ws('/down')
    ev = l.event(pb.WebSocketConnectionEvent.CONNECTED)
    cid = ev.connection_id if ev else ''
    op = [0]

    def push():
        op[0] += 1
        m = pb.ServiceMessage()
        o = m.ws_outbound
        o.connection_id, o.event, o.payload, o.op_id = cid, 'down.msg', b'{"n":%d}' % op[0], op[0]
        l.send(m)
        return l.result(op[0], 5)
    r = push()
    check('control: a push before the SIGTERM is ok', r is not None and r.ok, 'result %r' % (r,))
    os.kill(A.pid, signal.SIGTERM)
    results = []
    end = time.monotonic() + slow(3)
    while time.monotonic() < end:
        r = push()
        results.append(None if r is None else (r.ok, r.error.type, r.error.code))
        if r is None or not r.ok:
            break
        time.sleep(0.02)
    check('a push to a connection closing in linkd\'s shutdown: NOT_DELIVERED (410), not ok',
          results and results[-1] == (False, 'NOT_DELIVERED', 410), 'results after SIGTERM: %r' % results[-3:])
    got = []
    while True:
        f = w.frame(3)
        if f is None or f[0] == 8:
            break
        got.append(f[1])
    check('... the client got server.shutdown and close 1001 (and no push after them)',
          w.close_code == 1001 and got and b'server.shutdown' in got[-1],
          'close %r, last messages %r' % (w.close_code, got[-2:]))
    w.close()
    l.close()


# ============================================================================
# A keep-alive connection left idle (its own linkd, run in the background)
# ============================================================================

def idle_watch():
    s = tcp()
    s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
    rd = Reader(s)
    r = rd.response(5)
    t0 = time.monotonic()
    first = status(r)
    events = []
    end = t0 + 75 * A.slow
    while time.monotonic() < end:
        before = len(rd.buf)
        rd._fill(min(end, time.monotonic() + 1))
        if len(rd.buf) != before:
            events.append((round(time.monotonic() - t0, 1), bytes(rd.buf[:60])))
        if rd.closed:
            events.append((round(time.monotonic() - t0, 1), 'closed'))
            break
    s.close()
    closed_at = next((t for t, e in events if e == 'closed'), None)
    data = [e for t, e in events if e != 'closed']
    check('an idle keep-alive connection gets no 408 (nothing at all) while idle',
          first == 200 and not data, 'first answer %s; then %r' % (first, events[:3]))
    check('... and is closed at about 60 s (not 30 s)', closed_at is not None and 58 <= closed_at <= 63 * A.slow,
          'closed at %s s' % closed_at)


# ============================================================================

GROUPS = {k[2:]: v for k, v in list(globals().items()) if k.startswith('g_')}


def main():
    global A
    p = argparse.ArgumentParser()
    p.add_argument('group')
    p.add_argument('dir', nargs='?')
    p.add_argument('--port', type=int, default=0)
    p.add_argument('--socket', default='')
    p.add_argument('--pid', type=int, default=0)
    p.add_argument('--tmp', default='/tmp')
    p.add_argument('--secret', default='')
    p.add_argument('--log', default='')
    p.add_argument('--svc-out', default='', help="the main service's (hmain) svc.py output")
    p.add_argument('--svc-small', default='', help="hsmall's svc.py output")
    p.add_argument('--slow', type=float, default=1.0)
    p.add_argument('--rss-scale', type=float, default=1.0, help='RSS allowances multiplied by this (sanitizers, valgrind)')
    p.add_argument('--tag', default='')
    A = p.parse_args()
    if A.group == 'makekeys':
        make_keys(A.dir)
        return
    if A.group == 'idle_watch':
        idle_watch()
        return
    if A.group not in GROUPS:
        sys.exit('unknown group %s (groups: %s)' % (A.group, ' '.join(sorted(GROUPS))))
    try:
        GROUPS[A.group]()
    except Exception as e:
        import traceback
        traceback.print_exc()
        check('group ran to its end', False, '%s: %s' % (type(e).__name__, e))


if __name__ == '__main__':
    main()
