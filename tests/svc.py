#!/usr/bin/python3
"""Test service for linkd: speaks the real service protocol (proto/linkd.proto,
varint-delimited ServiceMessage frames on the Unix socket).

Run with /usr/bin/python3 (needs Debian's python3-protobuf). It prints one line
per event on stdout (flushed), for tests to grep:
  READY {"instance":..,"max_frame_bytes":..}   registration accepted
  REFUSED <reason>                                registration refused (exit 3)
  EVENT {"type":"CONNECTED","conn":..,"rooms":[..],"user":{..},"close_code":N}
  INBOUND {"conn":..,"type":..,"data":..,"id":..,"binary":b}
  HTTP {"method":..,"path":..,"id":N}
  RESULT {"op_id":N,"ok":b,"error":..,"delivered":N}
  COUNT {"members":N,"nodes":N,"nodes_known":N}   a RoomCountResult (do.count)
  ERROR {"type":..,"message":..}                  an ErrorResponse frame from linkd
  HEARTBEAT {"reply":b}
  SENT-GARBAGE <mode>
  LINK_CLOSED                                     linkd closed the link (exit 0; with
                                                  --reconnect: RECONNECTING, then READY again)
  DECODE_ERROR <why>                              a frame from linkd did not parse (exit 4)

HTTP behaviour (every registered route): echo JSON of the request. Query
parameters steer it: sleep=MS answers after MS ms (HTTP-HELD id, then
HTTP-ANSWERED id, on stdout); noreply=1 never answers;
status=N answers with that status; size=N pads the body with N bytes; exit=1
makes the process exit at once without answering; hname=X&hvalue=Y (repeatable,
in pairs, percent-decoded, so CR/LF/NUL can be expressed: %0D%0A, %00) adds the
response header X: Y as it is, valid or not.

WebSocket behaviour (envelope paths; "puppet" mode): the client message's
type says what to do:
  echo            reply with data
  whoami          reply {"conn":<id>,"instance":..,"user":..}
  do.join         {"room":r[, "conn":id]} JOIN, reply after CommandResult
  do.leave        {"room":r[, "conn":id]} LEAVE, reply after CommandResult
  do.emit         {"room":r,"event":e,"data":d,"except":[ids]} room push
  do.all          {"event":e,"data":d,"except":[ids]} push to everyone
  do.send         {"to":id,"event":e,"data":d} push to one connection
  do.close        {"to":id (default self),"code":c,"reason":s}
  do.rooms        {"conn":id (default self)} RoomsQuery, reply with its answer
  do.count        {"room":r,"timeout":ms} RoomCountQuery (members on every node in
                  cluster mode), reply {"members":N,"nodes":N,"nodes_known":N}
  do.flood        {"n":N,"size":S[,"to":id]} N pushes of about S bytes each, then a reply
  do.fail         reply with error {"type":"FORBIDDEN","code":403}
  do.noreply      no reply at all
  do.exit         the service exits at once (os._exit)
  do.later        {"ms":N,"data":d} reply with d after N ms (LATER-HELD, then
                  LATER-ANSWERED, with the correlation id, on stdout)
  anything else   reply with {"unknown":type}
Ops with op_id reply {"ok":true} or {"ok":false,"error":{..}} once linkd's
CommandResult arrives (only when the client message had an id).
Raw paths (--raw): every frame is echoed back as it is (text stays text,
binary stays binary); a text frame "all:<x>" is broadcast to everyone as <x>.
"""
import argparse, json, os, select, socket, sys, time, heapq
from urllib.parse import unquote

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'build'))
import linkd_pb2 as pb  # noqa: E402


def out(*a):
    sys.stdout.write(' '.join(str(x) for x in a) + '\n')
    sys.stdout.flush()


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


def split_frame(buf):
    """One varint-delimited frame off the front of buf: (frame, rest), or
    (None, buf) while it is incomplete."""
    n = shift = i = 0
    while i < len(buf):
        c = buf[i]; i += 1
        n |= (c & 0x7f) << shift; shift += 7
        if not c & 0x80:
            if len(buf) - i < n:
                break
            return buf[i:i + n], buf[i + n:]
    return None, buf


def user_dict(u):
    return {'user_id': u.user_id, 'username': u.username, 'roles': list(u.roles),
            'tenant_id': u.tenant_id, 'authenticated': u.authenticated,
            # TLS with --tls-client-ca: the verified client certificate
            'client_cert_cn': getattr(u, 'client_cert_cn', ''),
            'client_cert_sha256': getattr(u, 'client_cert_sha256', '')}


class LinkClosed(Exception):
    """The link went away and --reconnect asks for another one."""


class Svc:
    def __init__(self, a):
        self.a = a
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(a.socket)
        self.buf = b''
        self.timers = []  # (when, seq, fn)
        self.seq = 0
        self.next_op = 1
        self.pending_ops = {}   # op_id -> (conn, corr)
        self.pending_q = {}     # query_id -> (conn, corr)

    # ---- framing
    def send_msg(self, m):
        data = m.SerializeToString()
        self.sock.sendall(varint(len(data)) + data)

    def read_frames(self):
        try:
            d = self.sock.recv(1 << 20)
        except ConnectionResetError:
            d = b''
        if not d:
            out('LINK_CLOSED')
            if getattr(self.a, 'reconnect', False):
                raise LinkClosed()
            sys.exit(0)
        self.buf += d
        frames = []
        while True:
            f, self.buf = split_frame(self.buf)
            if f is None:
                break
            m = pb.ServiceMessage()
            try:
                m.ParseFromString(f)
            except Exception as e:  # e.g. invalid UTF-8 in a proto3 string field
                out('DECODE_ERROR', '%s: %s; frame %r' % (type(e).__name__, e, f[:200]))
                sys.exit(4)
            frames.append(m)
        return frames

    def later(self, ms, fn):
        self.seq += 1
        heapq.heappush(self.timers, (time.monotonic() + ms / 1000.0, self.seq, fn))

    # ---- registration
    def register(self):
        a = self.a
        m = pb.ServiceMessage()
        r = m.register_service
        r.name = a.name
        r.version = a.version
        if a.namespace:
            setattr(r, 'namespace_name' if hasattr(r, 'namespace_name') else 'namespace', a.namespace)
        r.instance_id = a.instance
        if getattr(a, "max_inbound", 0):   # callers that build their own args (fail_pusher.py) may not have it
            r.max_inbound_frame_bytes = a.max_inbound
        for spec in a.route:
            parts = spec.split()
            rt = r.routes.add()
            rt.method = parts[0]
            rt.path = parts[1]
            for extra in parts[2:]:
                if extra == 'auth':
                    rt.auth = True
                elif extra.startswith('roles='):
                    rt.roles.extend(extra[6:].split(','))
                elif extra.startswith('cors='):
                    rt.cors_origins.extend(extra[5:].split(','))
        if a.ws:
            w = r.websocket
            w.enabled = True
            w.path = a.ws
            w.raw = a.raw
            w.max_message_size_bytes = a.max_msg
            w.auth_required = a.ws_auth
            w.compression = a.compression
            w.max_connections_per_user = a.max_per_user
            if getattr(a, 'recovery', None):   # "WINDOW_MS:HISTORY"
                win, hist = a.recovery.split(':')
                w.recovery.window_ms = int(win)
                w.recovery.history = int(hist)
        self.send_msg(m)

    # ---- senders
    def ws_reply(self, conn, corr, data=None, error=None):
        if not corr:
            return
        m = pb.ServiceMessage()
        r = m.ws_response
        r.connection_id = conn
        r.correlation_id = corr
        if error is not None:
            r.error.code = error.get('code', 400)
            r.error.type = error.get('type', 'ERROR')
            r.error.message = error.get('message', '')
        else:
            r.data = json.dumps(data, separators=(',', ':')).encode() if data is not None else b''
        self.send_msg(m)

    def new_op(self, conn, corr):
        op = self.next_op
        self.next_op += 1
        self.pending_ops[op] = (conn, corr)
        return op

    def outbound(self, conn, corr, target, event, data, excl=(), binary=False, raw_payload=None):
        m = pb.ServiceMessage()
        o = m.ws_outbound
        kind, val = target
        if kind == 'conn':
            o.connection_id = val
        elif kind == 'room':
            o.room = val
        else:
            o.broadcast_all = True
        o.event = event or ''
        if raw_payload is not None:
            o.payload = raw_payload
        else:
            o.payload = json.dumps(data, separators=(',', ':')).encode()
        o.except_connections.extend(excl or [])
        o.binary = binary
        o.op_id = self.new_op(conn, corr) if corr else 0
        self.send_msg(m)

    # ---- handlers
    def on_http(self, q):
        a = self.a
        qs = {}
        hnames, hvalues = [], []
        for kv in q.query.split('&') if q.query else []:
            k, _, v = kv.partition('=')
            qs[k] = v
            if k == 'hname':
                hnames.append(unquote(v))
            elif k == 'hvalue':
                hvalues.append(unquote(v))
        out('HTTP', json.dumps({'method': q.method, 'path': q.path, 'id': q.request_id}))
        if qs.get('exit') == '1':
            out('EXITING')
            os._exit(0)
        if qs.get('noreply') == '1':
            return
        body = {
            'method': q.method, 'path': q.path, 'route': q.route,
            'params': {p.name: p.value for p in q.params},
            'query': q.query,
            'headers': [[h.name, h.value] for h in q.headers],
            'body': q.body.decode('latin-1'), 'body_len': len(q.body),
            'instance': a.instance, 'service': a.name,
            'user': user_dict(q.user), 'remote': q.remote_address,
        }
        if 'size' in qs:
            body['pad'] = 'x' * int(qs['size'])
        resp = pb.ServiceMessage()
        r = resp.http_response
        r.request_id = q.request_id
        r.status = int(qs.get('status', '200'))
        h = r.headers.add(); h.name = 'Content-Type'; h.value = 'application/json'
        h = r.headers.add(); h.name = 'X-Instance'; h.value = a.instance
        for hn, hv in zip(hnames, hvalues + [''] * len(hnames)):
            h = r.headers.add(); h.name = hn; h.value = hv
        r.body = json.dumps(body, separators=(',', ':')).encode()
        if 'sleep' in qs:
            out('HTTP-HELD', q.request_id)
            self.later(int(qs['sleep']), lambda: (self.send_msg(resp), out('HTTP-ANSWERED', q.request_id)))
        else:
            self.send_msg(resp)

    def on_event(self, e):
        names = {0: 'CONNECTED', 1: 'DISCONNECTED', 2: 'EXISTING', 3: 'RESUMED'}
        out('EVENT', json.dumps({'type': names.get(e.event_type, str(e.event_type)),
                                 'conn': e.connection_id, 'rooms': list(e.rooms),
                                 'previous': getattr(e, 'previous_connection_id', ''),
                                 'path': e.path, 'service': e.service_name,
                                 'user': user_dict(e.user), 'close_code': e.close_code,
                                 'remote': e.remote_address}, separators=(',', ':')))

    def on_inbound(self, i):
        conn, corr = i.connection_id, i.correlation_id
        if self.a.raw:
            out('INBOUND', json.dumps({'conn': conn, 'binary': i.binary, 'len': len(i.payload),
                                       'data': i.payload.decode('latin-1')}, separators=(',', ':')))
            p = i.payload
            if not i.binary and p.startswith(b'all:'):
                self.outbound(conn, '', ('all', True), '', None, binary=False, raw_payload=p[4:])
            else:
                self.outbound(conn, '', ('conn', conn), '', None, binary=i.binary, raw_payload=p)
            return
        raw = i.payload.decode('utf-8', 'replace')
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = {'unparsable': raw}
        t = i.message_type
        out('INBOUND', json.dumps({'conn': conn, 'type': t, 'data': data, 'id': corr,
                                   'user': user_dict(i.user)}, separators=(',', ':')))
        d = data if isinstance(data, dict) else {}
        if t == 'echo':
            self.ws_reply(conn, corr, data)
        elif t == 'whoami':
            self.ws_reply(conn, corr, {'conn': conn, 'instance': self.a.instance, 'user': user_dict(i.user)})
        elif t in ('do.join', 'do.leave'):
            m = pb.ServiceMessage()
            r = m.ws_room_operation
            r.connection_id = d.get('conn', conn)
            r.room = d.get('room', '')
            r.operation = pb.WebSocketRoomOperation.JOIN if t == 'do.join' else pb.WebSocketRoomOperation.LEAVE
            r.op_id = self.new_op(conn, corr) if corr else 0
            self.send_msg(m)
        elif t == 'do.emit':
            self.outbound(conn, corr, ('room', d.get('room', '')), d.get('event', 'room.msg'),
                          d.get('data'), d.get('except', []))
        elif t == 'do.all':
            self.outbound(conn, corr, ('all', True), d.get('event', 'all.msg'), d.get('data'), d.get('except', []))
        elif t == 'do.send':
            self.outbound(conn, corr, ('conn', d.get('to', conn)), d.get('event', 'direct.msg'), d.get('data'))
        elif t == 'do.close':
            m = pb.ServiceMessage()
            c = m.close_connection
            c.connection_id = d.get('to', conn)
            c.code = int(d.get('code', 1000))
            c.reason = d.get('reason', '')
            target = c.connection_id
            c.op_id = self.new_op(conn, corr if target != conn else '')
            self.send_msg(m)
        elif t == 'do.rooms':
            m = pb.ServiceMessage()
            q = m.rooms_query
            q.query_id = self.next_op
            self.next_op += 1
            q.connection_id = d.get('conn', conn)
            self.pending_q[q.query_id] = (conn, corr)
            self.send_msg(m)
        elif t == 'do.count':
            m = pb.ServiceMessage()
            q = m.room_count_query
            q.query_id = self.next_op
            self.next_op += 1
            q.room = d.get('room', '')
            q.timeout_ms = int(d.get('timeout', 0))
            self.pending_q[q.query_id] = (conn, corr)
            self.send_msg(m)
        elif t == 'do.flood':
            pad = 'f' * int(d.get('size', 1000))
            for k in range(int(d.get('n', 100))):
                self.outbound(conn, '', ('conn', d.get('to', conn)), d.get('event', 'flood'), {'k': k, 'pad': pad})
            self.ws_reply(conn, corr, {'sent': int(d.get('n', 100))})
        elif t == 'do.fail':
            self.ws_reply(conn, corr, error={'code': 403, 'type': 'FORBIDDEN', 'message': 'not allowed'})
        elif t == 'do.noreply':
            pass
        elif t == 'do.exit':
            out('EXITING')
            os._exit(0)
        elif t == 'do.later':
            out('LATER-HELD', corr)
            self.later(int(d.get('ms', 100)), lambda: (self.ws_reply(conn, corr, d.get('data')), out('LATER-ANSWERED', corr)))
        else:
            self.ws_reply(conn, corr, {'unknown': t})

    def on_result(self, r):
        err = None
        if r.HasField('error'):
            err = {'type': r.error.type, 'message': r.error.message, 'code': r.error.code}
        out('RESULT', json.dumps({'op_id': r.op_id, 'ok': r.ok, 'error': err,
                                  'delivered': getattr(r, 'delivered', 0)}, separators=(',', ':')))
        conn, corr = self.pending_ops.pop(r.op_id, (None, None))
        if conn and corr:
            d = {'ok': r.ok}
            if err:
                d['error'] = err
            self.ws_reply(conn, corr, d)

    def on_rooms(self, r):
        conn, corr = self.pending_q.pop(r.query_id, (None, None))
        d = {'rooms': sorted(r.rooms)}
        if r.HasField('error'):
            d['error'] = {'type': r.error.type, 'message': r.error.message}
        out('ROOMS', json.dumps(d, separators=(',', ':')))
        if conn and corr:
            self.ws_reply(conn, corr, d)

    def on_count(self, r):
        conn, corr = self.pending_q.pop(r.query_id, (None, None))
        d = {'members': r.members, 'nodes': r.nodes, 'nodes_known': r.nodes_known}
        out('COUNT', json.dumps(d, separators=(',', ':')))
        if conn and corr:
            self.ws_reply(conn, corr, d)

    def dispatch(self, m):
        k = m.WhichOneof('message')
        if k == 'register_result':
            r = m.register_result
            if r.ok:
                out('READY', json.dumps({'instance': self.a.instance, 'max_frame_bytes': r.max_frame_bytes,
                                         'linkd_version': r.linkd_version}))
                self.after_ready()
            else:
                out('REFUSED', r.reason)
                sys.exit(3)
        elif k == 'http_request':
            self.on_http(m.http_request)
        elif k == 'ws_connection_event':
            self.on_event(m.ws_connection_event)
        elif k == 'ws_inbound':
            self.on_inbound(m.ws_inbound)
        elif k == 'command_result':
            self.on_result(m.command_result)
        elif k == 'rooms_result':
            self.on_rooms(m.rooms_result)
        elif k == 'room_count_result':
            self.on_count(m.room_count_result)
        elif k == 'heartbeat':
            out('HEARTBEAT', json.dumps({'reply': m.heartbeat.reply}))
            if not m.heartbeat.reply:
                r = pb.ServiceMessage()
                r.heartbeat.timestamp_ms = int(time.time() * 1000)
                r.heartbeat.reply = True
                self.send_msg(r)
        elif k == 'error':
            out('ERROR', json.dumps({'type': m.error.type, 'message': m.error.message, 'code': m.error.code}))
        else:
            out('OTHER', k)

    def after_ready(self):
        if self.a.send_heartbeat:
            m = pb.ServiceMessage()
            m.heartbeat.timestamp_ms = int(time.time() * 1000)
            self.send_msg(m)
        g = self.a.garbage
        if not g:
            return
        if g == 'garbage':
            # a varint length then bytes that are not a ServiceMessage (field 0 / wire type 7)
            junk = bytes([0xff, 0xff, 0xff, 0xff, 0x07, 0x00, 0x01])
            self.sock.sendall(varint(len(junk)) + junk)
        elif g == 'badvarint':
            self.sock.sendall(b'\xff' * 12)
        elif g == 'oversize':
            n = self.a.oversize or (64 << 20)
            # announce a frame far over any sane maximum, then send part of it
            self.sock.sendall(varint(n) + b'\x00' * 65536)
        elif g == 'badproto':
            # field 4 (http_response) length-delimited with a length past the end
            bad = bytes([0x22, 0x7f, 0x08, 0x01])
            self.sock.sendall(varint(len(bad)) + bad)
        out('SENT-GARBAGE', g)

    def run(self):
        if self.a.first == 'http_response':
            m = pb.ServiceMessage()
            m.http_response.request_id = 1
            m.http_response.status = 200
            self.send_msg(m)
            out('SENT-FIRST', self.a.first)
        elif self.a.first == 'garbage':
            self.sock.sendall(b'\x05\xff\xff\xff\xff\xff')
            out('SENT-FIRST', self.a.first)
        else:
            self.register()
        while True:
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                fn()
            tmo = None
            if self.timers:
                tmo = max(0.0, self.timers[0][0] - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], tmo)
            if r:
                for m in self.read_frames():
                    self.dispatch(m)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--socket', required=True)
    p.add_argument('--name', default='echo')
    p.add_argument('--instance', default='')
    p.add_argument('--version', default='1.0.0')
    p.add_argument('--namespace', default='')
    p.add_argument('--route', action='append', default=[],
                   help='"METHOD /pattern [auth] [roles=a,b] [cors=o1,o2]" (repeatable)')
    p.add_argument('--ws', default='', help='WebSocket path')
    p.add_argument('--raw', action='store_true')
    p.add_argument('--ws-auth', action='store_true')
    p.add_argument('--compression', action='store_true', help='ask for permessage-deflate')
    p.add_argument('--recovery', default='', help='WINDOW_MS:HISTORY: connection recovery on the WebSocket path')
    p.add_argument('--max-msg', type=int, default=0)
    p.add_argument('--max-per-user', type=int, default=0)
    p.add_argument('--max-inbound', type=int, default=0,
                   help='RegisterService.max_inbound_frame_bytes: the largest frame this service reads (0: linkd\'s limit)')
    p.add_argument('--garbage', default='', choices=['', 'garbage', 'badvarint', 'oversize', 'badproto'])
    p.add_argument('--oversize', type=int, default=0)
    p.add_argument('--first', default='', choices=['', 'http_response', 'garbage'],
                   help='send this instead of RegisterService as the first frame')
    p.add_argument('--send-heartbeat', action='store_true', help='send one Heartbeat after READY')
    p.add_argument('--reconnect', action='store_true',
                   help='when the link closes (linkd restarts), connect again every 100 ms and register again')
    a = p.parse_args()
    if not a.instance:
        a.instance = '%s-%d' % (a.name, os.getpid())
    if a.reconnect:
        run_reconnecting(a)
    try:
        Svc(a).run()
    except (BrokenPipeError, ConnectionResetError):
        out('LINK_CLOSED')
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(0)


def run_reconnecting(a):
    """Like the SDK: a lost link is replaced, the service registers again."""
    while True:
        try:
            s = Svc(a)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.1)
            continue
        except KeyboardInterrupt:
            sys.exit(0)
        try:
            s.run()
        except (LinkClosed, BrokenPipeError, ConnectionResetError) as e:
            if not isinstance(e, LinkClosed):
                out('LINK_CLOSED')
            out('RECONNECTING')
            try:
                s.sock.close()
            except OSError:
                pass
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == '__main__':
    main()
