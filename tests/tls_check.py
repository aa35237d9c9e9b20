#!/usr/bin/python3
"""TLS checks for tests/t_tls*.sh (Debian's /usr/bin/python3: ssl, python3-websocket,
python3-websockets, python3-cryptography). Prints PASS:/FAIL: lines.

    tls_check.py NAME MODE      with the environment below
      wss        envelopes, errors, rooms shared with a plain ws:// member, permessage-deflate
      records    records that arrive together, corrupted, truncated and garbage records,
                 close_notify, while a wss connection stays open and working
      stall-none / stall-half   a client that connects and sends nothing / half a
                 ClientHello: prints "STALL <mode> <seconds until linkd closed it>"
      client-cert  --tls-client-ca: with the right certificate the service sees its CN and
                 SHA-256 (HTTP and WebSocket), without one or with another CA's it is refused
      reload     SIGHUP with a new certificate while a wss client stays connected; then a
                 reload that fails keeps the old one
      resume-cert  a resumed session still carries the client certificate's CN and SHA-256
      ticket-reload  a reload that adds a client CA: a ticket from before must not get in
                 without a certificate
      shutdown   a wss client held until linkd's SIGTERM: server.shutdown, close 1001
Environment: TLS_PORT, LINKD_PORT, PKI (the test PKI dir), T_SLOW, and per mode
CLI_FP (client certificate fingerprint), LINKD_PID, LINKD_LOG, LIVE_CERT, LIVE_KEY, CONF, READY_FILE.
"""
import asyncio, json, os, socket, ssl, struct, sys, time, urllib.request

sys.path.insert(0, os.environ.get('TESTS_DIR', os.path.dirname(os.path.abspath(__file__))))
import websocket  # noqa: E402
from ws_client import WS, Checks, metric, wait_until  # noqa: E402

PORT = int(os.environ.get('TLS_PORT', '0'))
PLAIN = int(os.environ.get('LINKD_PORT', '0'))
PKI = os.environ.get('PKI', '')
SLOW = float(os.environ.get('T_SLOW', '1'))
CA = os.path.join(PKI, 'ca.crt')
BASE = 'http://127.0.0.1:%d' % PLAIN


def ctx(cert=None, ca=CA):
    c = ssl.create_default_context(cafile=ca)
    if cert:
        c.load_cert_chain(os.path.join(PKI, cert + '.crt'), os.path.join(PKI, cert + '.key'))
    return c


def sslopt(cert=None):
    o = {'ca_certs': CA, 'cert_reqs': ssl.CERT_REQUIRED, 'server_hostname': 'localhost'}
    if cert:
        o['certfile'] = os.path.join(PKI, cert + '.crt')
        o['keyfile'] = os.path.join(PKI, cert + '.key')
    return o


class WSS(WS):
    """ws_client.WS over wss:// (python3-websocket with sslopt)."""
    def __init__(self, path, cert=None, timeout=5, headers=None):
        self.url = 'wss://localhost:%d%s' % (PORT, path)
        self.ws = websocket.create_connection(self.url, timeout=timeout * SLOW, header=headers or [],
                                              skip_utf8_validation=True, sslopt=sslopt(cert))
        self.inbox, self.frames, self.pongs, self.closed = [], [], [], None


def https_get(path, cert=None, headers=None, timeout=5):
    """(status, body) of a GET over https (urllib; a refused handshake raises)."""
    req = urllib.request.Request('https://localhost:%d%s' % (PORT, path), headers=headers or {})
    try:
        r = urllib.request.urlopen(req, context=ctx(cert), timeout=timeout * SLOW)
        return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def peer_cert(cert=None):
    """The certificate a new TLS connection is given: (serial, CN, issuer CN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    c = ctx(cert)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    with socket.create_connection(('127.0.0.1', PORT), timeout=5 * SLOW) as s:
        with c.wrap_socket(s, server_hostname='localhost') as t:
            der = t.getpeercert(binary_form=True)
    x = x509.load_der_x509_certificate(der)
    cn = lambda n: n.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return x.serial_number, cn(x.subject), cn(x.issuer)


def one_request(path, cert=None, session=None, context=None):
    """GET path on a new TLS connection (resuming session if given); returns
    (status, body, the SSLSession, whether it was resumed). Raises if refused."""
    c = context or ctx(cert)
    with socket.create_connection(('127.0.0.1', PORT), timeout=5 * SLOW) as s:
        with c.wrap_socket(s, server_hostname='localhost', session=session) as t:
            t.sendall(b'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' % path.encode())
            d = b''
            while True:
                try:
                    x = t.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not x:
                    break
                d += x
            head, _, body = d.partition(b'\r\n\r\n')
            st = int(head.split(b' ')[1]) if head.startswith(b'HTTP/1.1 ') else 0
            return st, body, t.session, t.session_reused


# ---- a TLS connection driven by hand (ssl.SSLObject over memory BIOs), so the
# test decides how records are cut into TCP writes
class Raw:
    def __init__(self, cert=None):
        self.s = socket.create_connection(('127.0.0.1', PORT), timeout=5 * SLOW)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.o = ctx(cert).wrap_bio(self.inc, self.out, server_hostname='localhost')
        self.plain = b''
        self.eof = None      # why reading ended: 'close_notify', 'eof', 'reset', 'alert ...'
        while True:
            try:
                self.o.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.fill()
        self.flush()

    def records(self, data):
        """data encrypted into one record, returned (not sent)."""
        self.o.write(data)
        return self.out.read()

    def flush(self):
        d = self.out.read()
        if d:
            self.s.sendall(d)

    def fill(self, timeout=None):
        self.s.settimeout((timeout or 5) * SLOW)
        try:
            d = self.s.recv(65536)
        except ConnectionResetError:
            self.eof = 'reset'
            raise EOFError
        if not d:
            self.inc.write_eof()
            if not self.eof:
                self.eof = 'eof'
            raise EOFError
        self.inc.write(d)

    def read_until(self, pred, timeout=5):
        """Reads plaintext until pred(self.plain) or the end; True if pred held."""
        end = time.monotonic() + timeout * SLOW
        while not pred(self.plain):
            try:
                d = self.o.read(65536)
                if not d:     # SSLObject.read gives b'' once close_notify came
                    self.eof = 'close_notify'
                    return pred(self.plain)
                self.plain += d
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self.eof = 'close_notify'
                return pred(self.plain)
            except ssl.SSLError as e:
                self.eof = 'alert %s' % e.reason
                return pred(self.plain)
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                self.fill(left / SLOW)
            except (EOFError, socket.timeout, OSError):
                if self.eof is None:
                    self.eof = 'timeout'
                try:
                    self.plain += self.o.read(65536)
                except ssl.SSLZeroReturnError:
                    self.eof = 'close_notify'
                except ssl.SSLError:
                    pass
                return pred(self.plain)
        return True

    def wait_end(self, timeout=5):
        """Reads until linkd ends the connection; returns how (self.eof)."""
        self.read_until(lambda p: False, timeout)
        return self.eof

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


REQ = b'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n'
ANSWER = b'HTTP/1.1 200'


def ws_frame(op, payload, mask=b'\x11\x22\x33\x44'):
    n = len(payload)
    head = bytes([0x80 | op])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack('!H', n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# ---------------------------------------------------------------------------
def mode_wss(c):
    A, B = WSS('/ws/t'), WSS('/ws/t')
    P = WS('ws://127.0.0.1:%d/ws/t' % PLAIN)
    r = A.call('echo', {'x': 1, 's': 'hé'})
    c.eq('wss: an envelope with an id gets its reply', r, {'id': r and r.get('id'), 'data': {'x': 1, 's': 'hé'}})
    r = A.call('do.fail')
    c.eq('wss: an error reply', r and r.get('error'), {'type': 'FORBIDDEN', 'message': 'not allowed', 'code': 403})
    A.send(raw='not json')
    m = A.expect(lambda m: isinstance(m, dict) and 'error' in m)
    c.ok("wss: linkd's own INVALID_MESSAGE answer", m and m['error'].get('type') == 'INVALID_MESSAGE', m)
    big = {'pad': 'z' * 40000}      # bigger than one TLS record (16 KiB) both ways
    r = A.call('echo', big)
    c.ok('wss: a 40 KB message and its reply cross several TLS records intact', r and r.get('data') == big, str(r)[:100])
    ids = [w.whoami() for w in (A, B, P)]
    for w in (A, B, P):
        w.call('do.join', {'room': 'mixed'})
    B.call('do.emit', {'room': 'mixed', 'event': 'room.msg', 'data': {'n': 7}, 'except': [ids[1]]})
    got = [w.expect(lambda m: isinstance(m, dict) and m.get('type') == 'room.msg', 3) for w in (A, P)]
    c.ok('rooms: a push to a room reaches its wss and its plain ws member', got == [{'type': 'room.msg', 'data': {'n': 7}}] * 2, got)
    B.sync()
    c.ok('rooms: the except list holds over TLS (sender left out)', not [m for m in B.inbox if isinstance(m, dict) and m.get('type') == 'room.msg'], B.inbox)
    A.call('do.all', {'event': 'all.msg', 'data': 'hi'})
    got = [w.expect(lambda m: isinstance(m, dict) and m.get('type') == 'all.msg', 3) for w in (A, B, P)]
    c.ok('a push to everyone reaches wss and ws clients alike', all(got), got)
    A.ping(b'tls-ping')
    c.ok('wss: ping answered with its pong', A.expect(lambda m: m == ('pong', b'tls-ping'), 3) is not None, A.pongs)
    A.send_frame(struct.pack('!H', 1000), websocket.ABNF.OPCODE_CLOSE)
    c.eq("wss: the close handshake: linkd's close frame comes back", A.wait_close(3), (1000, ''))
    for w in (B, P):
        w.close()

    async def deflate():
        import websockets
        sc = ctx()
        z = await websockets.connect('wss://localhost:%d/ws/t' % PORT, ssl=sc, compression='deflate', max_size=None)
        ext = z.response_headers.get('Sec-WebSocket-Extensions', '')
        c.ok('wss + permessage-deflate negotiated (%s)' % ext, 'permessage-deflate' in ext, ext)
        big = {'text': 'linkd over tls ' * 2000}
        await z.send(json.dumps({'type': 'echo', 'data': big, 'id': 'z1'}))
        r = json.loads(await asyncio.wait_for(z.recv(), 5 * SLOW))
        c.ok('wss + deflate: a compressed 30 KB message and its compressed reply intact', r == {'id': 'z1', 'data': big}, str(r)[:80])
        await z.close()
    try:
        asyncio.run(deflate())
    except Exception as e:
        c.ok('wss + permessage-deflate session', False, '%s: %s' % (type(e).__name__, e))


def mode_records(c):
    keep = WSS('/ws/t')
    keep.whoami()
    h0 = metric(BASE, 'linkd_tls_handshakes_total')

    # Two requests in two records in one TCP write, then a third one later:
    # linkd answers the first while the second is still in its input.
    r = Raw()
    r.s.sendall(r.records(REQ) + r.records(REQ))
    c.ok('two records in one TCP write (pipelined requests): both answered',
         r.read_until(lambda p: p.count(ANSWER) >= 2), '%r, end %s' % (r.plain[-120:], r.eof))
    r.s.sendall(r.records(REQ))
    c.ok('... and a request after them still decrypts (record sequence numbers kept)',
         r.read_until(lambda p: p.count(ANSWER) >= 3), 'answers %d, end %s' % (r.plain.count(ANSWER), r.eof))
    r.close()

    # The same on a WebSocket: a ping (answered by linkd at once) and a message
    # in one TCP write, then another message.
    r = Raw()
    r.s.sendall(r.records(b'GET /ws/t HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                          b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'))
    up = r.read_until(lambda p: b'\r\n\r\n' in p)
    c.ok('raw wss upgrade: 101', up and r.plain.startswith(b'HTTP/1.1 101'), r.plain[:60])
    r.plain = r.plain.split(b'\r\n\r\n', 1)[1]
    echo = lambda i: ws_frame(1, json.dumps({'type': 'echo', 'data': i, 'id': 'e%d' % i}).encode())
    r.s.sendall(r.records(ws_frame(9, b'pp')) + r.records(echo(1)))
    ok1 = r.read_until(lambda p: b'"id":"e1"' in p and b'\x8a\x02pp' in p)
    r.s.sendall(r.records(echo(2)))
    ok2 = r.read_until(lambda p: b'"id":"e2"' in p)
    c.ok('wss: a ping and a message in one TCP write, then another message: pong and both replies',
         ok1 and ok2, 'pong+e1 %s, e2 %s, end %s, got %r' % (ok1, ok2, r.eof, r.plain[-80:]))
    r.close()

    # A record with one byte flipped (its authentication tag fails)
    r = Raw()
    rec = bytearray(r.records(REQ))
    rec[-3] ^= 0x40
    r.s.sendall(bytes(rec))
    end = r.wait_end(5)
    c.ok('a corrupted record: no answer, the connection is closed (%s)' % end,
         end in ('eof', 'reset', 'close_notify') or (end or '').startswith('alert'), end)
    c.ok('... and nothing of it reached HTTP', ANSWER not in r.plain, r.plain[:80])
    r.close()

    # A record cut in the middle, then the end of the stream
    r = Raw()
    rec = r.records(REQ)
    r.s.sendall(rec[:len(rec) // 2])
    r.s.shutdown(socket.SHUT_WR)
    end = r.wait_end(5)
    c.ok('a truncated record then FIN: closed without an answer (%s)' % end, end not in ('timeout', None) and ANSWER not in r.plain, end)
    r.close()

    # Garbage where a record header should be
    r = Raw()
    r.s.sendall(bytes(range(256)) * 4)
    end = r.wait_end(5)
    c.ok('garbage after the handshake: closed (%s)' % end, end not in ('timeout', None), end)
    r.close()

    # A record header announcing more than TLS allows
    r = Raw()
    r.s.sendall(b'\x17\x03\x03\xff\xff' + b'\x00' * 100)
    end = r.wait_end(5)
    c.ok('a record longer than 16 KiB + overhead announced: closed (%s)' % end, end not in ('timeout', None), end)
    r.close()

    # "Connection: close": the answer, then close_notify, then FIN
    r = Raw()
    r.s.sendall(r.records(b'GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'))
    end = r.wait_end(5)
    c.ok('Connection: close: the answer, then close_notify before the TCP close (%s)' % end,
         ANSWER in r.plain and end == 'close_notify', '%r %s' % (r.plain[:40], end))
    r.close()

    # The client sends close_notify: linkd closes too
    r = Raw()
    try:
        r.o.unwrap()
    except ssl.SSLWantReadError:
        pass
    r.flush()
    end = r.wait_end(5)
    c.ok("the client's close_notify: linkd closes the connection (%s)" % end, end not in ('timeout', None), end)
    r.close()

    rr = keep.call('echo', 'still here')
    c.ok('a wss connection open through all of this still works', rr and rr.get('data') == 'still here', rr)
    st, body = https_get('/health')
    c.ok('new https requests are served', st == 200, st)
    h1 = metric(BASE, 'linkd_tls_handshakes_total')
    c.ok('linkd_tls_handshakes_total counted the handshakes (%s -> %s)' % (h0, h1), h1 is not None and h0 is not None and h1 >= h0 + 8, (h0, h1))
    keep.close()


def mode_stall(c, how):
    """Connects and stalls; prints how long linkd took to drop it."""
    s = socket.create_connection(('127.0.0.1', PORT), timeout=30 * SLOW)
    t0 = time.monotonic()
    if how == 'half':
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        o = ctx().wrap_bio(inc, out, server_hostname='localhost')
        try:
            o.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        s.sendall(hello[:len(hello) // 2])
    how_end = 'timeout'
    try:
        while True:
            d = s.recv(4096)
            if not d:
                how_end = 'eof'
                break
    except socket.timeout:
        pass
    except ConnectionResetError:
        how_end = 'reset'
    print('STALL %s %.2f %s' % (how, time.monotonic() - t0, how_end), flush=True)


def mode_client_cert(c):
    fp = os.environ['CLI_FP']
    st, body = https_get('/t/whoami', cert='cli')
    u = json.loads(body).get('user', {}) if st == 200 else {}
    c.eq('https with the client certificate: the service sees its CN', (st, u.get('client_cert_cn')), (200, 'device-42'))
    c.eq('... and its SHA-256 (= openssl x509 -fingerprint -sha256)', u.get('client_cert_sha256'), fp)
    c.eq('... no token: still unauthenticated as a user', u.get('authenticated'), False)
    tok = os.environ.get('TOKEN')
    if tok:
        st, body = https_get('/t/whoami', cert='cli', headers={'Authorization': 'Bearer ' + tok})
        u = json.loads(body).get('user', {}) if st == 200 else {}
        c.eq('a token and a client certificate: both reach the service',
             (st, u.get('user_id'), u.get('authenticated'), u.get('client_cert_cn')), (200, 'u-7', True, 'device-42'))
    w = WSS('/ws/t', cert='cli')
    r = w.call('whoami')
    u = r and r['data']['user'] or {}
    c.eq('wss with the client certificate: WebSocket messages carry CN and SHA-256',
         (u.get('client_cert_cn'), u.get('client_cert_sha256')), ('device-42', fp))
    w.close()

    def refused(cert):
        try:
            st, _ = https_get('/t/whoami', cert=cert)
            return 'answered %s' % st
        except (ssl.SSLError, ConnectionError, urllib.error.URLError, OSError) as e:
            return 'refused: %s' % (getattr(e, 'reason', None) or e)
    why = refused(None)
    c.ok('no client certificate: the handshake is refused (%s)' % why, why.startswith('refused'), why)
    why = refused('rogue')
    c.ok("a client certificate from another CA: refused (%s)" % why, why.startswith('refused'), why)
    try:
        WSS('/ws/t')
        c.ok('wss without a client certificate: refused', False, 'connected')
    except Exception as e:
        c.ok('wss without a client certificate: refused', True, e)
    # the plain listener never makes up certificate fields
    w = WS('ws://127.0.0.1:%d/ws/t' % PLAIN)
    r = w.call('whoami')
    u = r and r['data']['user'] or {}
    c.eq('plain ws:// on the same linkd: no certificate fields', (u.get('client_cert_cn'), u.get('client_cert_sha256')), ('', ''))
    w.close()


def mode_reload(c):
    import shutil, signal
    pid = int(os.environ['LINKD_PID'])
    log = os.environ['LINKD_LOG']
    live_crt, live_key = os.environ['LIVE_CERT'], os.environ['LIVE_KEY']
    logn = lambda pat: open(log, errors='replace').read().count(pat)
    sn, cn, _ = peer_cert()
    c.eq('before the reload: the first certificate (serial 0x1001)', (hex(sn), cn), ('0x1001', 'localhost'))
    A = WSS('/ws/t')
    A.call('do.join', {'room': 'stay'})
    cx = ctx()
    cx.maximum_version = ssl.TLSVersion.TLSv1_2
    _, _, ticket, _ = one_request('/health', context=cx)   # a session ticket under the first (EC) certificate
    r0 = metric(BASE, 'linkd_reloads_total') or 0
    # the new certificate (RSA, with its intermediate) at the same paths
    shutil.copy(os.path.join(PKI, 'srv2.crt'), live_crt + '.new')
    shutil.copy(os.path.join(PKI, 'srv2.key'), live_key + '.new')
    os.chmod(live_key + '.new', 0o600)
    os.rename(live_crt + '.new', live_crt)
    os.rename(live_key + '.new', live_key)
    os.kill(pid, signal.SIGHUP)
    ok = wait_until(lambda: (metric(BASE, 'linkd_reloads_total') or 0) > r0, 10 * SLOW)
    c.ok('SIGHUP: reload applied (linkd_reloads_total grew)', ok, open(log, errors='replace').read()[-300:])
    sn, cn, issuer = peer_cert()
    c.eq('after the reload a new connection gets the new certificate (serial, CN, issued by the intermediate)',
         (hex(sn), cn, issuer), ('0x1002', 'linkd-reloaded', 'Linkd Test Intermediate'))
    st, _ = https_get('/health')
    c.eq('... and verifies through the chain in the certificate file (ECDHE-RSA)', st, 200)
    try:
        st, _, _, reused = one_request('/health', context=cx, session=ticket)
        why = 'status %s, resumed %s' % (st, reused)
    except (ssl.SSLError, OSError) as e:
        st, why = 0, 'refused: %s' % e
    c.ok('a client offering a ticket from before the reload (EC certificate, now RSA) still gets in: %s' % why[:70], st == 200, why)
    r = A.call('echo', 'after reload')
    c.ok('the wss connection opened before the reload was not dropped and still works', r and r.get('data') == 'after reload', r)
    B = WSS('/ws/t')
    B.call('do.emit', {'room': 'stay', 'event': 'room.msg', 'data': 1})
    c.ok('... it still gets room pushes (sent from a connection made after the reload)',
         A.expect(lambda m: isinstance(m, dict) and m.get('type') == 'room.msg', 3) is not None, A.inbox)
    # a failed reload: a key that does not match the certificate
    f0 = metric(BASE, 'linkd_reloads_failed_total') or 0
    refused0 = logn('reload refused, nothing changed')
    shutil.copy(os.path.join(PKI, 'other.key'), live_key + '.new')
    os.chmod(live_key + '.new', 0o600)
    os.rename(live_key + '.new', live_key)
    os.kill(pid, signal.SIGHUP)
    ok = wait_until(lambda: (metric(BASE, 'linkd_reloads_failed_total') or 0) > f0, 10 * SLOW)
    c.ok('a reload with a mismatched key is refused (linkd_reloads_failed_total grew)', ok)
    line = [l for l in open(log, errors='replace').read().splitlines() if 'reload refused, nothing changed' in l]
    c.ok('... and logged: "reload refused, nothing changed: <why naming the key file>"',
         len(line) > refused0 and live_key in line[-1], line[-1:] or 'no such line')
    sn, cn, _ = peer_cert()
    c.eq('... new connections keep the certificate in force (serial 0x1002)', (hex(sn), cn), ('0x1002', 'linkd-reloaded'))
    r = A.call('echo', 'after failed reload')
    c.ok('... and live connections keep working', r and r.get('data') == 'after failed reload', r)
    for w in (A, B):
        w.close()


def mode_resume_cert(c):
    """A resumed session (ticket) still carries the client certificate's identity."""
    fp = os.environ['CLI_FP']
    cx = ctx('cli')
    cx.maximum_version = ssl.TLSVersion.TLSv1_2
    st, body, sess, _ = one_request('/t/whoami', context=cx)
    st2, body2, _, reused = one_request('/t/whoami', context=cx, session=sess)
    u = json.loads(body2).get('user', {}) if st2 == 200 else {}
    c.eq('a resumed session (ticket) with a client certificate: still its CN and SHA-256',
         (st, st2, reused, u.get('client_cert_cn'), u.get('client_cert_sha256')), (200, 200, True, 'device-42', fp))


def mode_ticket_reload(c):
    """A reload that brings a client CA: a session ticket from before must not
    let a client in without a certificate."""
    import signal
    pid, conf = int(os.environ['LINKD_PID']), os.environ['CONF']
    cx = ctx()
    cx.maximum_version = ssl.TLSVersion.TLSv1_2
    st, _, sess, _ = one_request('/t/whoami', context=cx)
    c.eq('before the client CA: served without a client certificate (a ticket kept)', (st, sess is not None), (200, True))
    n = metric(BASE, 'linkd_reloads_total') or 0
    with open(conf, 'a') as f:
        f.write('tls_client_ca = %s\n' % CA)
    os.kill(pid, signal.SIGHUP)
    c.ok('reload adding tls_client_ca applied', wait_until(lambda: (metric(BASE, 'linkd_reloads_total') or 0) > n, 10 * SLOW))
    try:
        st, _, _, _ = one_request('/t/whoami', context=cx)
        why = 'answered %s' % st
    except (ssl.SSLError, OSError) as e:
        why = 'refused (%s)' % e
    c.ok('after it, a full handshake without a client certificate is refused: %s' % why[:60], why.startswith('refused'), why)
    try:
        st, body, _, reused = one_request('/t/whoami', context=cx, session=sess)
        why = 'answered %s (resumed %s): %s' % (st, reused, body[body.find(b'"user"'):][:120])
    except (ssl.SSLError, OSError) as e:
        why = 'refused (%s)' % e
    c.ok('... and so is one resuming a ticket issued before the reload: %s' % why[:60], why.startswith('refused'), why)


def mode_shutdown(c):
    """Holds a wss connection until linkd shuts down: server.shutdown, then close 1001."""
    w = WSS('/ws/t')
    w.whoami()
    open(os.environ['READY_FILE'], 'w').write('ready\n')
    m = w.expect(lambda m: isinstance(m, dict) and m.get('type') == 'server.shutdown', 30 * SLOW)
    code = w.wait_close(10 * SLOW)
    c.ok('SIGTERM: a wss client gets {"type":"server.shutdown"} and close 1001', m is not None and code and code[0] == 1001, (m, code))


def main():
    name, mode = sys.argv[1], sys.argv[2]
    c = Checks(name)
    if mode.startswith('stall-'):
        mode_stall(c, mode[6:])
        return
    fn = {'wss': mode_wss, 'records': mode_records, 'client-cert': mode_client_cert, 'reload': mode_reload,
          'resume-cert': mode_resume_cert, 'ticket-reload': mode_ticket_reload, 'shutdown': mode_shutdown}[mode]
    c.run(mode, lambda: fn(c))


if __name__ == '__main__':
    main()
