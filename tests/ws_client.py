#!/usr/bin/python3
"""WebSocket test client for linkd's tests (Debian python3-websocket 1.2.3).

Use as a library from /usr/bin/python3 (tests put tests/ on sys.path):

    from ws_client import WS, Checks
    c = Checks('t_ws_rooms')             # prints PASS:/FAIL: lines
    a = WS(url)                          # connects (raises on a non-101 answer)
    r = a.call('echo', {'x': 1})         # sends with a fresh id, returns the reply dict
    conn = a.whoami()                    # the connection id linkd gave it
    m = a.expect(lambda m: m.get('type') == 'room.msg')   # next matching message (or None)
    seen = a.sync()                      # messages that arrived before an echo round trip
    code, reason = a.wait_close()        # the server's close frame

Also a command-line mode for handshake checks:
    ws_client.py handshake HOST PORT PATH [Header: value ...]   -> prints the status line
"""
import json, socket, sys, time, itertools

import websocket
from websocket import ABNF

_ids = itertools.count(1)


class Closed(Exception):
    def __init__(self, code, reason):
        super().__init__('closed %s %r' % (code, reason))
        self.code, self.reason = code, reason


class WS:
    def __init__(self, url, headers=None, timeout=5, rcvbuf=None):
        self.url = url
        opts = {}
        if rcvbuf:
            opts['sockopt'] = ((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf),)
        self.ws = websocket.create_connection(url, timeout=timeout, header=headers or [],
                                              skip_utf8_validation=True, **opts)
        self.inbox = []      # parsed JSON messages not yet consumed
        self.frames = []     # raw (opcode, bytes) of every data frame received, in order
        self.pongs = []
        self.closed = None   # (code, reason) once the server closed

    # ---- sending
    def send(self, type_=None, data=None, id=None, raw=None):
        if raw is not None:
            self.ws.send(raw)
            return
        env = {}
        if type_ is not None:
            env['type'] = type_
        if data is not None:
            env['data'] = data
        if id is not None:
            env['id'] = id
        self.ws.send(json.dumps(env))

    def send_binary(self, b):
        self.ws.send(b, opcode=ABNF.OPCODE_BINARY)

    def send_frame(self, data, opcode, fin=1):
        f = ABNF.create_frame(data, opcode, fin)
        self.ws.send_frame(f)

    def send_fragmented(self, text, parts=3, opcode=ABNF.OPCODE_TEXT):
        data = text.encode() if isinstance(text, str) else text
        n = max(1, len(data) // parts)
        chunks = [data[i:i + n] for i in range(0, len(data), n)]
        for i, ch in enumerate(chunks):
            op = opcode if i == 0 else ABNF.OPCODE_CONT
            self.send_frame(ch, op, fin=1 if i == len(chunks) - 1 else 0)

    def ping(self, payload=b'hi'):
        self.ws.ping(payload)

    # ---- receiving
    def _read_one(self, timeout):
        """Reads one frame; returns a parsed JSON message, ('bin', bytes) / ('text', str)
        for non-JSON frames; None on timeout. Raises Closed on a close frame."""
        if self.closed:
            raise Closed(*self.closed)
        self.ws.settimeout(max(0.01, timeout))
        try:
            op, fr = self.ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            return None
        except socket.timeout:
            return None
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError):
            self.closed = (None, b'')
            raise Closed(None, b'')
        if op == ABNF.OPCODE_CLOSE:
            d = fr.data
            code = int.from_bytes(d[:2], 'big') if len(d) >= 2 else None
            self.closed = (code, d[2:])
            raise Closed(code, d[2:])
        if op == ABNF.OPCODE_PONG:
            self.pongs.append(fr.data)
            return ('pong', fr.data)
        if op == ABNF.OPCODE_PING:
            return ('ping', fr.data)
        data = fr.data if hasattr(fr, 'data') else fr
        self.frames.append((op, data))
        if op == ABNF.OPCODE_TEXT:
            t = data.decode('utf-8', 'replace') if isinstance(data, bytes) else data
            try:
                return json.loads(t)
            except ValueError:
                return ('text', t)
        return ('bin', data)

    def expect(self, pred=lambda m: True, timeout=5):
        """The first message (inbox first) for which pred is true; None on timeout."""
        for i, m in enumerate(self.inbox):
            if _safe(pred, m):
                return self.inbox.pop(i)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            m = self._read_one(left)
            if m is None:
                return None
            if isinstance(m, tuple) and m[0] in ('pong', 'ping'):
                if _safe(pred, m):
                    return m
                continue
            if _safe(pred, m):
                return m
            self.inbox.append(m)

    def reply(self, id, timeout=5):
        return self.expect(lambda m: isinstance(m, dict) and m.get('id') == id and 'type' not in m, timeout)

    def call(self, type_, data=None, timeout=5):
        id = 'c%d' % next(_ids)
        self.send(type_, data, id)
        return self.reply(id, timeout)

    def whoami(self):
        r = self.call('whoami')
        return r['data']['conn'] if r and isinstance(r.get('data'), dict) else None

    def sync(self, timeout=5):
        """Round trip through the service; returns every message that arrived before
        the reply (and keeps them in the inbox)."""
        id = 'sync%d' % next(_ids)
        self.send('echo', None, id)
        got = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = self._read_one(end - time.monotonic())
            if m is None:
                break
            if isinstance(m, dict) and m.get('id') == id and 'type' not in m:
                self.inbox.extend(got)
                return got
            if isinstance(m, tuple) and m[0] in ('pong', 'ping'):
                continue
            got.append(m)
        raise TimeoutError('sync: no echo reply')

    def wait_close(self, timeout=5):
        """Reads until the server's close frame; returns (code, reason) or None on timeout."""
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                m = self._read_one(end - time.monotonic())
                if m is not None and not (isinstance(m, tuple) and m[0] in ('pong', 'ping')):
                    self.inbox.append(m)
        except Closed as c:
            return (c.code, c.reason.decode('utf-8', 'replace') if isinstance(c.reason, bytes) else c.reason)
        return None

    def close(self, code=1000, reason=b''):
        try:
            self.ws.close(status=code, reason=reason, timeout=2)
        except Exception:
            pass

    def abort(self):
        """Vanish: drop the TCP connection without a close frame."""
        try:
            self.ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
        except Exception:
            pass
        try:
            self.ws.sock.close()
        except Exception:
            pass


def _safe(pred, m):
    try:
        return bool(pred(m))
    except Exception:
        return False


class Checks:
    def __init__(self, name):
        self.name = name
        self.failed = 0

    def ok(self, what, cond, why=''):
        if cond:
            print('PASS: %s: %s' % (self.name, what), flush=True)
        else:
            self.failed += 1
            print('FAIL: %s: %s — %s' % (self.name, what, str(why)[:400] or 'failed'), flush=True)
        return cond

    def eq(self, what, got, want):
        return self.ok(what, got == want, 'got %r, want %r' % (got, want))

    def run(self, what, fn):
        """Runs fn(); an exception is one FAIL (the script goes on)."""
        try:
            fn()
        except Exception as e:
            self.ok(what, False, 'exception %s: %s' % (type(e).__name__, e))


def metric(base, name):
    """Value of the sample NAME (with labels, exact) at base+'/metrics'; None if absent."""
    import urllib.request
    txt = urllib.request.urlopen(base + '/metrics', timeout=5).read().decode()
    for line in txt.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name:
            v = float(parts[1])
            return int(v) if v == int(v) else v
    return None


def wait_until(fn, timeout=5, step=0.05):
    """Polls fn() until it returns a true value (returned) or the timeout passes (last value)."""
    end = time.monotonic() + timeout
    while True:
        try:
            v = fn()
        except Exception:
            v = None
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


def svc_lines(path, kind):
    """The JSON payloads of the test service's output lines of one kind (EVENT, INBOUND...)."""
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith(kind + ' '):
                try:
                    out.append(json.loads(line[len(kind) + 1:]))
                except ValueError:
                    pass
    return out


def svc_event(path, type_, conn=None, timeout=5):
    """Waits for the service's EVENT of type_ (for conn if given); returns it or None."""
    def find():
        for e in svc_lines(path, 'EVENT'):
            if e['type'] == type_ and (conn is None or e['conn'] == conn):
                return e
    return wait_until(find, timeout)


def handshake(host, port, path, headers, timeout=5):
    """Sends an upgrade request by hand; returns (status_line, headers_text)."""
    req = 'GET %s HTTP/1.1\r\nHost: %s:%s\r\n' % (path, host, port)
    for h in headers:
        req += h + '\r\n'
    req += '\r\n'
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(req.encode())
    buf = b''
    try:
        while b'\r\n\r\n' not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
    except socket.timeout:
        pass
    s.close()
    head = buf.split(b'\r\n\r\n')[0].decode('latin-1')
    return head.split('\r\n')[0], head


STD = ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
       'Sec-WebSocket-Version: 13']

if __name__ == '__main__':
    if len(sys.argv) >= 5 and sys.argv[1] == 'handshake':
        line, head = handshake(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:] or STD)
        print(head)
    else:
        print(__doc__)
        sys.exit(2)
