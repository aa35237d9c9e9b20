#!/usr/bin/python3
"""Adversarial checks of linkd's recent changes (tests/t_robust2.sh drives it).

Each subcommand prints PASS:/FAIL: lines (without the test-name prefix: the
shell script adds it) and exits 0. Run with /usr/bin/python3.

  jwt URL SECRET                     JSON escapes in claims, NUL injection, truncation
  deflate HOST PORT PATH RAWPATH     permessage-deflate edge cases
  order HOST PORT PATH N             many messages on one connection arrive in order
  churn HOST PORT PATH CONNS ROUNDS  thousands of joins/leaves across rooms
  mixed HOST PORT PATH               broadcast to deflate + plain members
  stall SOCK HOST PORT PATH          a service that never reads
  shutdown SOCK                      connect a service, wait for SHUTDOWN after SIGTERM
"""
import base64, hashlib, hmac, json, os, random, socket, struct, sys, time, zlib
import urllib.request, urllib.error

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'build'))


def ok(name):
    print('PASS: ' + name, flush=True)


def bad(name, why):
    print('FAIL: %s — %s' % (name, str(why)[:300].replace('\n', ' ')), flush=True)


def check(name, cond, why=''):
    ok(name) if cond else bad(name, why or 'check failed')


# ---------------------------------------------------------------- JWT

def b64(x):
    return base64.urlsafe_b64encode(x).rstrip(b'=').decode()


def token(secret, claims_json):
    h = b64(b'{"alg":"HS256","typ":"JWT"}')
    p = b64(claims_json if isinstance(claims_json, bytes) else claims_json.encode())
    sig = b64(hmac.new(secret.encode(), (h + '.' + p).encode(), hashlib.sha256).digest())
    return h + '.' + p + '.' + sig


def get(url, tok):
    req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + tok})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:
        return 0, str(e).encode()


def cmd_jwt(url, secret):
    exp = int(time.time()) + 3600
    # 1. escapes decoded; surrogate pair -> U+1F600; lone surrogate -> U+FFFD
    claims = ('{"sub":"Jos\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/ \\n","preferred_username":"x\\ud800y",'
              '"tenant_id":"t\\u00fc","roles":["r\\u00e9"],"exp":%d}' % exp)
    st, body = get(url + '/echo', token(secret, claims))
    try:
        u = json.loads(body)['user']
    except Exception as e:
        u = {'err': str(e), 'body': body[:200]}
    check('jwt: escaped claims reach the service decoded', st == 200 and u.get('user_id') == 'Jos\u00e9 \U0001F600 "q" \\ / \n'
          and u.get('tenant_id') == 't\u00fc' and u.get('roles') == ['r\u00e9'], '%s %r' % (st, u))
    check('jwt: a lone surrogate becomes U+FFFD', u.get('username') == 'x\ufffdy', repr(u.get('username')))

    # 2. a sub over 127 bytes (raw or escaped, a character crossing byte 127)
    #    is refused whole: cut, two users sharing 127 bytes would become one
    for label, tail in (('raw 2-byte', '\u00e9'), ('raw 4-byte', '\U0001F600'), ('escaped 4-byte', '\\ud83d\\ude00')):
        pre = 'a' * (126 if '2-byte' in label else 125)
        claims = '{"sub":"%s%s","exp":%d}' % (pre, tail, exp)
        st, body = get(url + '/echo', token(secret, claims.encode('utf-8')))
        try:
            user = json.loads(body)['user']
        except Exception as e:
            user = {'unparsable': '%s %r' % (e, body[:120])}
        check('jwt: sub over 127 bytes refused, never cut (%s)' % label,
              st == 200 and not user.get('authenticated') and not user.get('user_id'), '%s %r' % (st, user))
    claims = '{"sub":"%s","exp":%d}' % ('a' * 125 + '\u00e9', exp)   # exactly 127 bytes
    st, body = get(url + '/echo', token(secret, claims.encode('utf-8')))
    try:
        uid = json.loads(body)['user']['user_id']
    except Exception as e:
        uid = 'unparsable: %s' % e
    check('jwt: a sub of exactly 127 bytes is kept whole', st == 200 and uid == 'a' * 125 + '\u00e9', '%s %r' % (st, uid))

    # 3. invalid UTF-8 in the claims is refused (401), linkd and the service stay fine
    claims = b'{"sub":"bad\xff\xfe","roles":["admin"],"exp":%d}' % exp
    st, _ = get(url + '/admin', token(secret, claims))
    check('jwt: non-UTF-8 claims refused (401 on a role route)', st == 401, 'status %s' % st)
    st, body = get(url + '/echo', token(secret, claims))
    check('jwt: non-UTF-8 claims: an open route sees no user', st == 200 and b'"authenticated":false' in body, '%s %r' % (st, body[-120:]))
    st, _ = get(url + '/echo', token(secret, '{"sub":"ok","exp":%d}' % exp))
    check('jwt: service still answers after bad claims', st == 200, 'status %s' % st)

    # 4. NUL injection: claims are packed NUL-separated inside linkd; a \u0000
    # in a claim must not shift fields or forge a role.
    claims = ('{"sub":"u1","preferred_username":"eve\\u0000\\u0000admin","roles":["user"],"exp":%d}' % exp)
    st, body = get(url + '/admin', token(secret, claims))
    check('jwt: \\u0000 in preferred_username cannot forge the admin role', st in (401, 403),
          'GET /admin (roles=admin) answered %s with token roles ["user"] and preferred_username "eve\\u0000\\u0000admin": %r' % (st, body[:160]))
    claims = ('{"sub":"u1\\u0000mallory\\u0000t2\\u0000admin","roles":["user"],"exp":%d}' % exp)
    st, body = get(url + '/echo', token(secret, claims))
    try:
        u = json.loads(body)['user']
    except Exception:
        u = {}
    check('jwt: \\u0000 in sub does not shift username/tenant/roles (refused: anonymous on an open route)',
          st == 401 or (u.get('roles') == ['user'] and u.get('tenant_id') == '') or (u.get('authenticated') is False and u.get('roles') == []),
          '%s user=%r' % (st, u))
    # a raw NUL byte (invalid JSON) inside a claim string
    claims = b'{"sub":"u1","preferred_username":"eve\x00\x00admin","roles":["user"],"exp":%d}' % exp
    st, body = get(url + '/admin', token(secret, claims))
    check('jwt: a raw NUL byte in a claim cannot forge the admin role', st in (401, 403), 'GET /admin answered %s' % st)


# ---------------------------------------------------------------- raw WebSocket client

class WS:
    def __init__(self, host, port, path, ext=None, timeout=5):
        self.s = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ('GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
               'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n' % (path, host, port, key))
        if ext is not None:
            req += 'Sec-WebSocket-Extensions: %s\r\n' % ext
        self.s.sendall((req + '\r\n').encode())
        buf = b''
        while b'\r\n\r\n' not in buf:
            d = self.s.recv(4096)
            if not d:
                raise IOError('closed during handshake: %r' % buf)
            buf += d
        head, _, self.buf = buf.partition(b'\r\n\r\n')
        self.head = head.decode('latin-1')
        self.status = int(self.head.split()[1])
        self.ext = ''
        for line in self.head.split('\r\n'):
            if line.lower().startswith('sec-websocket-extensions:'):
                self.ext = line.split(':', 1)[1].strip()

    def send_frame(self, opcode, payload, fin=True, rsv1=False):
        b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        n = len(payload)
        mask = os.urandom(4)
        if n < 126:
            hdr = struct.pack('!BB', b0, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack('!BBH', b0, 0x80 | 126, n)
        else:
            hdr = struct.pack('!BBQ', b0, 0x80 | 127, n)
        m = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
        self.s.sendall(hdr + mask + m)

    def _need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError('closed')
            self.buf += d

    def recv_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7f
        off = 2
        if n == 126:
            self._need(4); n = struct.unpack('!H', self.buf[2:4])[0]; off = 4
        elif n == 127:
            self._need(10); n = struct.unpack('!Q', self.buf[2:10])[0]; off = 10
        self._need(off + n)
        p = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x80, b0 & 0x40, b0 & 0x0f, p

    def recv_msg(self):
        """(opcode, payload bytes) of the next data message (inflated), or
        (8, close code) for a close frame; pings are answered."""
        parts, op0, z = [], None, False
        while True:
            fin, rsv1, op, p = self.recv_frame()
            if op == 9:
                self.send_frame(10, p); continue
            if op == 10:
                continue
            if op == 8:
                return 8, (struct.unpack('!H', p[:2])[0] if len(p) >= 2 else 1005)
            if op0 is None:
                op0, z = op, bool(rsv1)
            parts.append(p)
            if fin:
                data = b''.join(parts)
                if z:
                    d = zlib.decompressobj(-15)
                    data = d.decompress(data + b'\x00\x00\xff\xff')
                return op0, data

    def close_code(self):
        """Reads until a close frame; its code, or 'eof'/'timeout'."""
        try:
            while True:
                op, p = self.recv_msg()
                if op == 8:
                    return p
        except socket.timeout:
            return 'timeout'
        except (EOFError, ConnectionError):
            return 'eof'

    def close(self):
        try:
            self.s.close()
        except Exception:
            pass


def deflate_raw(data):
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    z = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert z.endswith(b'\x00\x00\xff\xff')
    return z[:-4]


def env(t, data=None, id=None):
    m = {'type': t}
    if data is not None:
        m['data'] = data
    if id is not None:
        m['id'] = id
    return json.dumps(m).encode()


def echo_ok(w, tag):
    w.send_frame(1, env('echo', tag, 'e-' + tag))
    for _ in range(20):
        op, p = w.recv_msg()
        if op == 8:
            return False
        if tag.encode() in p:
            return True
    return False


def cmd_deflate(host, port, path, rawpath):
    # negotiation
    w = WS(host, port, path, 'permessage-deflate; server_max_window_bits=10')
    check('deflate: an offer with server_max_window_bits is not accepted', w.status == 101 and 'permessage-deflate' not in w.ext,
          '%s ext=%r' % (w.status, w.ext)); w.close()
    w = WS(host, port, path, 'permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits')
    check('deflate: second acceptable offer taken', w.status == 101 and w.ext.startswith('permessage-deflate')
          and 'server_max_window_bits' not in w.ext, '%s ext=%r' % (w.status, w.ext))
    ok_rt = False
    try:
        big = 'z' * 3000
        w.send_frame(1, deflate_raw(env('echo', big, 'd1')), rsv1=True)
        op, p = w.recv_msg()
        ok_rt = op == 1 and big.encode() in p
    except Exception as e:
        p = repr(e)
    check('deflate: compressed round trip after multiple offers', ok_rt, repr(p)[:200]); w.close()
    w = WS(host, port, path, 'permessage-deflate; client_max_window_bits=9')
    check('deflate: client_max_window_bits=9 offer accepted without echoing a bigger window', w.status == 101 and 'server_max_window_bits' not in w.ext,
          '%s %r' % (w.status, w.ext)); w.close()
    w = WS(host, port, path, 'permessage-deflate; server_max_window_bits=15')
    # server_max_window_bits=15 is our window: RFC allows accepting it; refusing is also fine. Just must stay consistent:
    check('deflate: server_max_window_bits=15 answered consistently', w.status == 101 and
          ('permessage-deflate' not in w.ext or 'server_max_window_bits=15' in w.ext), repr(w.ext)); w.close()
    w = WS(host, port, path, 'permessage-deflate; bogus_param=1')
    check('deflate: an offer with an unknown parameter is declined (RFC 7692 5.1)', w.status == 101 and 'permessage-deflate' not in w.ext,
          repr(w.ext)); w.close()

    # fragmented compressed message: RSV1 on the first frame only
    w = WS(host, port, path, 'permessage-deflate')
    z = deflate_raw(env('echo', 'frag' * 400, 'f1'))
    a, b_, c = z[:10], z[10:len(z) // 2], z[len(z) // 2:]
    w.send_frame(1, a, fin=False, rsv1=True); w.send_frame(0, b_, fin=False); w.send_frame(0, c, fin=True)
    op, p = w.recv_msg()
    check('deflate: fragmented compressed message (RSV1 on first frame) accepted', op == 1 and b'fragfrag' in p, repr(p)[:120])
    # RSV1 on a continuation frame: protocol error
    w.send_frame(1, a, fin=False, rsv1=True); w.send_frame(0, b_ + c, fin=True, rsv1=True)
    code = w.close_code()
    check('deflate: RSV1 on a continuation frame closes with 1002', code == 1002, code); w.close()
    # one compressed frame (RSV1) each, on a fresh connection: the close code it must get
    bomb = deflate_raw(b'[' * (50 * 1024 * 1024))   # inflate bomb: ~50 KiB compressed -> 50 MiB
    pd = 'permessage-deflate'
    for label, ext, op, payload, want in [
            ('compressed ping closes with 1002', pd, 9, deflate_raw(b'hello'), 1002),
            ('RSV1 without negotiation closes with 1002', None, 1, deflate_raw(env('echo', 'x')), 1002),
            ('inflate bomb (%d bytes -> 50 MiB) closes with 1009' % len(bomb), pd, 1, bomb, 1009),
            ('garbage compressed data closes with 1007', pd, 1, b'\xff\xff\xff\xff\x00', 1007),
            ('compressed text with invalid UTF-8 closes with 1007', pd, 1, deflate_raw(b'{"type":"echo","data":"\xff\xfe"}'), 1007)]:
        w = WS(host, port, path, ext)
        w.send_frame(op, payload, rsv1=True)
        code = w.close_code()
        check('deflate: ' + label, code == want, code)
        w.close()
    # trailing data after a final deflate block (BFINAL) must not be silently accepted as something else
    w = WS(host, port, path, 'permessage-deflate')
    c1 = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    fin_block = c1.compress(env('echo', 'bfinal', 'b1')) + c1.flush(zlib.Z_FINISH)
    w.send_frame(1, fin_block, rsv1=True)
    try:
        op, p = w.recv_msg()
        res = (op, p[:80])
    except Exception as e:
        res = repr(e)
    check('deflate: a message ending in a BFINAL block is answered', isinstance(res, tuple) and b'bfinal' in res[1], res)
    w.close()
    # a compressed binary frame on a raw path (echoed back as it was sent, inflated)
    w = WS(host, port, rawpath, 'permessage-deflate')
    if 'permessage-deflate' in w.ext:
        payload = bytes(range(256)) * 8
        w.send_frame(2, deflate_raw(payload), rsv1=True)
        op, p = w.recv_msg()
        check('deflate: compressed binary frame on a raw path echoed intact', op == 2 and p == payload, '%s %r' % (op, p[:40]))
    else:
        ok('deflate: raw path did not negotiate (nothing to check)')
    w.close()
    # linkd still fine
    w = WS(host, port, path, 'permessage-deflate')
    check('deflate: linkd still echoes after the hostile frames', echo_ok(w, 'after-deflate'))
    w.close()


def cmd_mixed(host, port, path):
    """One deflate member, one plain member in a room; big and small broadcasts."""
    wz = WS(host, port, path, 'permessage-deflate')
    wp = WS(host, port, path)
    wz2 = WS(host, port, path, 'permessage-deflate')
    members = [wz, wp, wz2]
    for i, w in enumerate(members):
        w.send_frame(1, env('do.join', {'room': 'mix'}, 'j%d' % i))
        op, p = w.recv_msg()
    good = True
    why = ''
    for k, size in enumerate((10, 5000, 30000, 3, 60000, 200)):
        data = ('%d:' % k) + ''.join(random.choice('abcdefghij') for _ in range(size))
        wp.send_frame(1, env('do.emit', {'room': 'mix', 'event': 'ev', 'data': data}))
        for w in members:
            for _ in range(10):
                op, p = w.recv_msg()
                try:
                    j = json.loads(p)
                except Exception:
                    good = False; why = 'not JSON: %r' % p[:80]; break
                if j.get('type') == 'ev' or j.get('event') == 'ev' or j.get('data') == data:
                    if j.get('data') != data:
                        good = False; why = 'size %d: payload differs (%r...)' % (size, str(j.get('data'))[:40])
                    break
    check('broadcast: deflate and plain members of one room get identical payloads', good, why)
    for w in members:
        w.close()


def cmd_order(host, port, path, n):
    """Every message gets exactly one answer (an echo or a RATE_LIMITED error);
    the echoes come back in the order they were sent."""
    w = WS(host, port, path)
    for i in range(n):
        w.send_frame(1, env('echo', i, 'o%d' % i))
    answers, echoes = {}, []
    try:
        while len(answers) < n:
            op, p = w.recv_msg()
            if op == 8:
                break
            j = json.loads(p)
            answers[j.get('id')] = answers.get(j.get('id'), 0) + 1
            if 'data' in j:
                echoes.append(j['data'])
    except Exception as e:
        print('# order: %r' % e, file=sys.stderr)
    check('batching: each of %d messages answered once' % n, len(answers) == n and set(answers.values()) == {1},
          '%d ids answered' % len(answers))
    check('batching: %d echoes on one connection in order' % len(echoes), len(echoes) > 0 and echoes == sorted(echoes),
          'first out of order at %s' % next((i for i in range(1, len(echoes)) if echoes[i] < echoes[i - 1]), None))
    w.close()


def cmd_churn(host, port, path, nconn, rounds):
    """Many connections join and leave many rooms (via the service's do.join/do.leave);
    after each round the service's RoomsQuery answer for each connection matches."""
    rnd = random.Random(7)
    ws = [WS(host, port, path, timeout=10) for _ in range(nconn)]
    joined = [set() for _ in range(nconn)]
    rooms = ['r%d' % i for i in range(97)]
    opid = 0
    bad_rooms = []

    def rpc(i, t, data):
        nonlocal opid
        opid += 1
        ws[i].send_frame(1, env(t, data, 'c%d' % opid))
        return 'c%d' % opid

    def collect(i, ids):
        ids = set(ids)
        res = {}
        while ids:
            op, p = ws[i].recv_msg()
            if op == 8:
                raise EOFError('closed %s' % p)
            j = json.loads(p)
            if j.get('id') in ids:
                ids.discard(j['id']); res[j['id']] = j
        return res

    for rd in range(rounds):
        for i in range(nconn):
            ops = {}
            want = set(joined[i])   # what the client asks for, in order
            for _ in range(12):
                r = rnd.choice(rooms)
                if r in want and rnd.random() < 0.6:
                    ops[rpc(i, 'do.leave', {'room': r})] = ('leave', r); want.discard(r)
                else:
                    ops[rpc(i, 'do.join', {'room': r})] = ('join', r); want.add(r)
            res = collect(i, list(ops))
            # Apply in send order what was done; a RATE_LIMITED answer means
            # linkd never forwarded that op (the burst can outrun the bucket).
            for k, (op, r) in ops.items():
                if 'error' in res[k]:
                    if res[k]['error'].get('type') != 'RATE_LIMITED':
                        bad_rooms.append((rd, i, 'op error', res[k]['error']))
                    continue
                (joined[i].add if op == 'join' else joined[i].discard)(r)
        for i in range(nconn):
            for _ in range(100):   # the query too can meet an empty token bucket
                q = rpc(i, 'do.rooms', {})
                j = collect(i, [q])[q]
                if (j.get('error') or {}).get('type') != 'RATE_LIMITED':
                    break
                time.sleep(0.02)
            d = j.get('data')
            got = set(d.get('rooms', []) if isinstance(d, dict) else (d or []))
            if got != joined[i]:
                bad_rooms.append((rd, i, sorted(got ^ joined[i])[:5]))
    check('index churn: RoomsQuery matches what each connection joined (%d conns x %d rounds)' % (nconn, rounds),
          not bad_rooms, bad_rooms[:3])
    total = sum(len(s) for s in joined)
    distinct = len(set().union(*joined))
    print('EXPECT %d %d' % (total, distinct), flush=True)
    # keep connections open until the shell has read the gauges
    sys.stdin.readline()
    for w in ws[: nconn // 2]:
        w.close()
    rest = joined[nconn // 2:]
    print('EXPECT %d %d' % (sum(len(s) for s in rest), len(set().union(*rest)) if rest else 0), flush=True)
    sys.stdin.readline()
    for w in ws[nconn // 2:]:
        w.close()


# ---------------------------------------------------------------- raw services

from svc import varint, split_frame  # noqa: E402  (the test service's framing helpers)


def svc_register(sock_path, name, ws_path=None, route=None):
    import linkd_pb2 as pb
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    m = pb.ServiceMessage()
    r = m.register_service
    r.name = name
    r.version = '1.0.0'
    if route:
        rt = r.routes.add(); rt.method = route[0]; rt.path = route[1]
    if ws_path:
        r.websocket.enabled = True
        r.websocket.path = ws_path
    d = m.SerializeToString()
    s.sendall(varint(len(d)) + d)
    return s, pb


def read_frames(s, pb, buf, until, timeout):
    """Reads ServiceMessages until until(m) is true; returns (m or None, buf)."""
    end = time.time() + timeout
    while time.time() < end:
        while True:
            f, buf = split_frame(buf)
            if f is None:
                break
            m = pb.ServiceMessage(); m.ParseFromString(f)
            if until(m):
                return m, buf
        s.settimeout(max(0.05, end - time.time()))
        try:
            d = s.recv(1 << 20)
        except socket.timeout:
            break
        if not d:
            return 'eof', buf
        buf += d
    return None, buf


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return -1


def cmd_stall(sock_path, host, port, path, pid):
    """A service that registers a WebSocket path and then never reads: clients
    flood it; linkd's memory must stay bounded and it must stay responsive."""
    s, pb = svc_register(sock_path, 'stall', ws_path=path)
    m, buf = read_frames(s, pb, b'', lambda m: m.HasField('register_result'), 5)
    check('stall: raw service registered', m not in (None, 'eof'), m)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss_kb(pid)
    ws = [WS(host, port, path, timeout=5) for _ in range(8)]
    payload = env('echo', 'y' * 8000)
    sent = 0
    t_end = time.time() + 4
    alive = list(ws)
    while time.time() < t_end and alive:
        for w in list(alive):
            try:
                for _ in range(20):
                    w.send_frame(1, payload); sent += 1
            except Exception:
                alive.remove(w)
    after = rss_kb(pid)
    grew = after - before
    check('stall: linkd RSS bounded while a service never reads (%d msgs of 8 KB sent, RSS +%d KiB)' % (sent, grew),
          grew < int(os.environ.get('R2_RSS_LIMIT_KB', 64 * 1024)), 'RSS grew by %d KiB' % grew)
    st = 0
    try:
        with urllib.request.urlopen('http://%s:%d/health' % (host, port), timeout=3) as r:
            st = r.status
    except Exception as e:
        st = str(e)
    check('stall: /health answers while the service is stuck', st == 200, st)
    # the clients that sent into the stuck link were told (error envelope or close), not silently dropped forever
    for w in ws:
        w.close()
    # now read everything: frames must be whole and decodable
    s.settimeout(5)
    total = 0
    okdec = True
    try:
        while True:
            m, buf = read_frames(s, pb, buf, lambda m: False, 1.0)
            if m == 'eof':
                break
            if m is None:
                break
    except Exception as e:
        okdec = False
        print('# decode error: %s' % e, file=sys.stderr)
    check('stall: frames queued for the stuck service decode once it reads again', okdec and len(buf) == 0,
          'leftover %d bytes' % len(buf))
    s.close()


def cmd_shutdown(sock_path, stuck):
    """Registers; prints READY; waits for the SHUTDOWN ErrorResponse (prints GOT/NONE)."""
    s, pb = svc_register(sock_path, 'sd%s' % stuck, route=('POST', '/sd%s' % stuck))
    m, buf = read_frames(s, pb, b'', lambda m: m.HasField('register_result'), 5)
    print('READY' if m not in (None, 'eof') else 'NOREG', flush=True)
    if stuck == '1':
        # fill the link: never read until linkd is told to stop (the shell sends requests meanwhile)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sys.stdin.readline()
    got = None
    m, buf = read_frames(s, pb, buf, lambda m: m.HasField('error') and m.error.type == 'SHUTDOWN', 20)
    print('GOT' if m not in (None, 'eof') else 'NONE', flush=True)


# ---------------------------------------------------------------- HTTP on one keep-alive connection

class H:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=6)
        self.buf = b''

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError('closed')
        self.buf += d

    def send(self, path):
        self.s.sendall(('GET %s HTTP/1.1\r\nHost: x\r\n\r\n' % path).encode())

    def read(self):
        """(status, headers dict, body) of the next response, framed strictly."""
        while b'\r\n\r\n' not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b'\r\n\r\n')
        lines = head.decode('latin-1').split('\r\n')
        st = int(lines[0].split()[1])
        hd = {}
        for l in lines[1:]:
            k, _, v = l.partition(':')
            hd[k.strip().lower()] = v.strip()
        if st in (204, 304) or st < 200:
            return st, hd, b''
        if hd.get('transfer-encoding', '').lower() == 'chunked':
            body = b''
            while True:
                while b'\r\n' not in self.buf:
                    self._fill()
                line, _, self.buf = self.buf.partition(b'\r\n')
                n = int(line.split(b';')[0], 16)
                while len(self.buf) < n + 2:
                    self._fill()
                body += self.buf[:n]; self.buf = self.buf[n + 2:]
                if n == 0:
                    return st, hd, body
        n = int(hd.get('content-length', '0'))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return st, hd, body


def cmd_http(host, port):
    # 1. a late answer never reaches the next request on the same connection
    h = H(host, port)
    h.send('/echo?sleep=1000&tag=A')
    st, _, body = h.read()
    check('http: a slow answer times out with 504', st == 504, st)
    h.send('/echo?sleep=600&tag=B')
    st, _, body = h.read()
    check('http: the next request on the slot gets its own answer, not the late one', st == 200 and b'tag=B' in body,
          '%s %r' % (st, body[:160]))
    h.s.close()
    # 2. 204 / 304 carry no body (the service sends one): pipelined framing stays intact
    h = H(host, port)
    for q in ('status=204', 'status=304', 'status=200&tag=C', 'status=204', 'status=200&tag=D'):
        h.send('/echo?' + q)
    got = []
    try:
        for _ in range(5):
            st, hd, body = h.read()
            got.append((st, hd.get('content-length'), body))
    except Exception as e:
        got.append(repr(e))
    okf = (len(got) == 5 and [g[0] for g in got] == [204, 304, 200, 204, 200] and b'tag=C' in got[2][2]
           and b'tag=D' in got[4][2] and got[0][1] in (None, '0'))
    # whatever followed must not be stray body bytes
    h.s.settimeout(0.3)
    try:
        extra = h.buf + h.s.recv(4096)
    except socket.timeout:
        extra = h.buf
    check('http: pipelined 204/304/200 framed without bodies', okf and not extra, '%r extra=%r' % ([(g[0], g[1], g[2][:30]) if isinstance(g, tuple) else g for g in got], extra[:80]))
    h.s.close()
    # 3. a 1xx from the service becomes 502
    for code in (100, 101, 199):
        h = H(host, port)
        h.send('/echo?status=%d' % code)
        try:
            st, _, _ = h.read()
        except Exception as e:
            st = repr(e)
        check('http: a service answering %d gets the client a 502' % code, st == 502, st)
        h.s.close()


def main():
    c, a = sys.argv[1], sys.argv[2:]
    try:
        if c == 'jwt':
            cmd_jwt(a[0], a[1])
        elif c == 'deflate':
            cmd_deflate(a[0], int(a[1]), a[2], a[3])
        elif c == 'mixed':
            cmd_mixed(a[0], int(a[1]), a[2])
        elif c == 'order':
            cmd_order(a[0], int(a[1]), a[2], int(a[3]))
        elif c == 'churn':
            cmd_churn(a[0], int(a[1]), a[2], int(a[3]), int(a[4]))
        elif c == 'stall':
            cmd_stall(a[0], a[1], int(a[2]), a[3], int(a[4]))
        elif c == 'http':
            cmd_http(a[0], int(a[1]))
        elif c == 'shutdown':
            cmd_shutdown(a[0], a[1])
    except Exception as e:
        import traceback
        traceback.print_exc()
        bad('%s: ran to the end' % c, '%s: %s' % (type(e).__name__, e))


if __name__ == '__main__':
    main()
