#!/usr/bin/python3
"""Writes the seed corpora of linkd's fuzz harnesses (tests/fuzz/corpus/NAME/).

Run with Debian's python (python3-protobuf) after `make build/linkd_pb2.py`:
    /usr/bin/python3 tests/fuzz/gen_corpus.py
Each seed starts with the harness's option byte (see the comment at the top
of tests/fuzz/NAME.cc). Seeds are written only when missing or changed, so
reproducers of past findings kept beside them (named finding-*) stay.
"""
import base64, hashlib, hmac, json, os, struct, sys, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'build'))
import linkd_pb2 as pb  # noqa: E402

OUT = os.path.join(HERE, 'corpus')
SECRET = b'fuzz-secret'          # the fixture's --jwt-secret (fuzz_common.h)
written = 0


def seed(harness, name, data):
    global written
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, name)
    if isinstance(data, str):
        data = data.encode()
    if os.path.exists(p) and open(p, 'rb').read() == data:
        return
    with open(p, 'wb') as f:
        f.write(data)
    written += 1


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()


def hs256(claims, header=None):
    h = json.dumps(header or {"alg": "HS256", "typ": "JWT"}, separators=(',', ':')).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims, separators=(',', ':')).encode()
    signing = b64u(h) + '.' + b64u(c)
    mac = hmac.new(SECRET, signing.encode(), hashlib.sha256).digest()
    return signing + '.' + b64u(mac)


FAR = 4102444800   # 2100-01-01
ADMIN = hs256({"sub": "u1", "preferred_username": "ann", "roles": ["admin", "dev"], "tenant_id": "t1", "exp": FAR})
USER = hs256({"sub": "u2", "username": "bob", "roles": ["user"], "exp": FAR})
EXPIRED = hs256({"sub": "u3", "exp": 1000})


# ---------------------------------------------------------------- http
def http_seeds():
    H = 'Host: fuzz\r\n'
    reqs = {
        'health-pipelined': (0, 'GET /health HTTP/1.1\r\n' + H + '\r\nGET /items/5?a=1 HTTP/1.1\r\n' + H + 'Origin: https://app.example\r\n\r\n'),
        'metrics': (0, 'GET /metrics HTTP/1.1\r\n' + H + '\r\n'),
        'head-health-post-health': (0, 'HEAD /health HTTP/1.1\r\n' + H + '\r\nPOST /health HTTP/1.1\r\n' + H + 'Content-Length: 2\r\n\r\n{}'),
        'post-auth-ok': (0, 'POST /items HTTP/1.1\r\n' + H + 'Authorization: Bearer ' + ADMIN + '\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"name":"x1"}'),
        'post-no-token': (0, 'POST /items HTTP/1.1\r\n' + H + 'Content-Length: 2\r\n\r\n{}'),
        'post-expired-token': (0, 'POST /items HTTP/1.1\r\n' + H + 'Authorization: Bearer ' + EXPIRED + '\r\nContent-Length: 0\r\n\r\n'),
        'admin-role-missing': (0, 'GET /admin/x HTTP/1.1\r\n' + H + 'Authorization: Bearer ' + USER + '\r\n\r\n'),
        'admin-role-ok-query-token': (0, 'GET /admin/x?token=' + ADMIN + '&b=2 HTTP/1.1\r\n' + H + '\r\n'),
        'preflight': (0, 'OPTIONS /items HTTP/1.1\r\n' + H + 'Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, authorization\r\n\r\n'),
        'preflight-route-origin': (0, 'OPTIONS /users/9 HTTP/1.1\r\n' + H + 'Origin: https://route.example\r\nAccess-Control-Request-Method: GET\r\n\r\nGET /users/9 HTTP/1.1\r\n' + H + 'Origin: https://route.example\r\n\r\n'),
        'preflight-denied': (0, 'OPTIONS /items/1 HTTP/1.1\r\n' + H + 'Origin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n'),
        'cors-star-route': (0, 'PUT /files/a.txt HTTP/1.1\r\n' + H + 'Origin: null\r\nContent-Length: 5\r\n\r\nhello'),
        'static-beats-param': (0, 'GET /users/stats HTTP/1.1\r\n' + H + '\r\nGET /users/42/ HTTP/1.1\r\n' + H + '\r\n'),
        'any-method': (0, 'DELETE /any/one/two HTTP/1.1\r\n' + H + '\r\nPATCH /any/x/y?z HTTP/1.1\r\n' + H + 'Content-Length: 1\r\n\r\nz'),
        'percent-params': (0, 'GET /items/a%20b%2Fc HTTP/1.1\r\n' + H + '\r\nGET /items/%zz HTTP/1.1\r\n' + H + '\r\n'),
        'not-found-gone': (0, 'GET /nope HTTP/1.1\r\n' + H + '\r\nGET /gone HTTP/1.1\r\n' + H + '\r\nGET /raw-info HTTP/1.1\r\n' + H + '\r\n'),
        'chunked-trailers': (0, 'POST /items HTTP/1.1\r\n' + H + 'Transfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n3;ext=1\r\n:1}\r\n0\r\nAuthorization: Bearer ' + ADMIN + '\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n'),
        'chunked-upgrade-trailer': (0, 'GET /ws HTTP/1.1\r\n' + H + 'Transfer-Encoding: chunked\r\n\r\n0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'),
        'expect-continue': (0, 'PUT /files/big HTTP/1.1\r\n' + H + 'Expect: 100-continue\r\nContent-Length: 4\r\n\r\nabcdPOST /items HTTP/1.1\r\n' + H + 'Expect: 100-continue\r\nContent-Length: 10\r\n\r\n'),
        'headers-too-large': (0, 'GET /items/1 HTTP/1.1\r\n' + H + 'X-Big: ' + 'a' * 5000 + '\r\n\r\n'),
        'too-many-headers': (0, 'GET /items/1 HTTP/1.1\r\n' + H + ''.join('X-%d: v\r\n' % i for i in range(110)) + '\r\n'),
        'body-too-large': (0, 'POST /items HTTP/1.1\r\n' + H + 'Content-Length: 9000\r\n\r\n' + 'b' * 100),
        'body-too-big-for-service': (0, 'PUT /files/big HTTP/1.1\r\n' + H + 'Content-Length: 7000\r\n\r\n' + 'b' * 7000),
        'chunked-too-large': (0, 'POST /items HTTP/1.1\r\n' + H + 'Transfer-Encoding: chunked\r\n\r\n' + ('800\r\n' + 'c' * 2048 + '\r\n') * 5 + '0\r\n\r\n'),
        'bad-request-line': (0, 'GET  /x HTTP/1.1\r\n\r\n'),
        'bad-header-name': (0, 'GET /items/1 HTTP/1.1\r\nHost : fuzz\r\n\r\n'),
        'absolute-target': (0, 'GET http://fuzz/items/1 HTTP/1.1\r\n' + H + '\r\nGET * HTTP/1.1\r\n' + H + '\r\n'),
        'http10-keepalive': (0, 'GET /items/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /health HTTP/1.0\r\n\r\n'),
        'connection-close': (0, 'GET /items/1 HTTP/1.1\r\n' + H + 'Connection: close\r\n\r\nGET /health HTTP/1.1\r\n' + H + '\r\n'),
        'host-missing-dup': (0, 'GET /items/1 HTTP/1.1\r\n\r\nGET /items/2 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'),
        'obs-fold-te': (0, 'POST /items HTTP/1.1\r\n' + H + 'Transfer-Encoding: identity,\r\n chunked\r\n\r\n0\r\n\r\n'),
        'te-and-cl': (0, 'POST /items HTTP/1.1\r\n' + H + 'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'),
        'http2-line': (0, 'GET /items/1 HTTP/2.0\r\n' + H + '\r\n'),
        'h2c-upgrade': (0, 'GET /items/1 HTTP/1.1\r\n' + H + 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nGET /health HTTP/1.1\r\n' + H + '\r\n'),
        'non-utf8-header': (0, 'GET /items/1 HTTP/1.1\r\n' + H + 'X-A: \xff\xfe\r\n\r\n'),
        'ws-upgrade-ok': (0, 'GET /ws HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nAuthorization: Bearer ' + USER + '\r\n\r\n\x81\x80\x00\x00\x00\x00'),
        'ws-upgrade-bad-version': (0, 'GET /ws HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n'),
        'ws-upgrade-bad-key': (0, 'GET /ws HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n'),
        'ws-upgrade-post': (0, 'POST /ws HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n'),
        'ws-path-no-upgrade': (0, 'GET /ws HTTP/1.1\r\n' + H + '\r\n'),
        'ws-upgrade-unknown-path': (0, 'GET /nows HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n'),
        'ws-upgrade-origin-denied': (0, 'GET /ws HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n'),
        'ws-raw-needs-token': (0, 'GET /raw HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'),
        'ws-raw-token': (0, 'GET /raw?token=' + USER + ' HTTP/1.1\r\n' + H + 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x82\x83\x00\x00\x00\x00abc'),
    }
    for name, (opt, text) in reqs.items():
        seed('http', name, bytes([opt, 0]) + text.encode('latin-1'))
    base = reqs['health-pipelined'][1] + 'POST /items HTTP/1.1\r\n' + H + 'Authorization: Bearer ' + ADMIN + '\r\nContent-Length: 2\r\n\r\n{}'
    variants = {'split-1': 0x01, 'split-3': 0x03, 'split-7': 0x04, 'half-close': 0x08, 'unanswered-504': 0x10,
                'answer-204': 0x20, 'answer-1xx': 0x40, 'answer-bad-header': 0x60, 'service-drops': 0x80, 'split-16-half-close': 0x0d}
    for name, opt in variants.items():
        seed('http', 'opt-' + name, bytes([opt, 0]) + base.encode())
    seed('http', 'opt-table-full', b'\x00\x01' + base.encode())
    seed('http', 'opt-slow-reader-pipelined', b'\x00\x08' + (('GET /items/1 HTTP/1.1\r\n' + H + '\r\n') * 12 + 'GET /health HTTP/1.1\r\n' + H + '\r\n').encode())
    seed('http', 'opt-shutdown', b'\x10\x02' + base.encode())
    seed('http', 'opt-time-passes', b'\x05\x04' + base.encode())
    seed('http', 'opt-time-passes-upgrade', b'\x06\x04' + (reqs['ws-upgrade-ok'][1] + '\x89\x80\0\0\0\0').encode('latin-1'))


# ---------------------------------------------------------------- ws
def frame(opcode, payload, fin=True, rsv=0, mask=b'\0\0\0\0', masked=True):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        h = bytes([b0, m | n])
    elif n < 65536:
        h = bytes([b0, m | 126]) + struct.pack('>H', n)
    else:
        h = bytes([b0, m | 127]) + struct.pack('>Q', n)
    if not masked:
        return h + payload
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return h + mask + body


def deflate(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data.encode() if isinstance(data, str) else data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b'\0\0\xff\xff')
    return out[:-4]


def ws_seeds():
    env = lambda **k: json.dumps(k, separators=(',', ':'))
    T = lambda s: frame(1, s)
    s = {
        'envelope-id': (0x20, T(env(type='chat.send', id='m-1', data={'text': 'hi'})) + T(env(type='chat.send', id=7, data=[1, 2])) + T(env(type='x', id='odd'))),
        'envelope-no-id': (0, T(env(type='chat.typing')) + T(env(type='chat.send', data=None))),
        'envelope-bad': (0, T('not json') + T('{"data":1}') + T('{"type":""}') + T('{"type":"a"} x') + T('[1,2]') + T('{"type":"a","id":null}') + T('{"type":"a","data":tru}')),
        'envelope-nul': (0, T('{"type":"a"}\0{"type":"b"}') + T('{"type":"a\u0001"}')),
        'envelope-deep': (0x20, T('{"type":"d","id":"n","data":' + '[' * 200 + ']' * 200 + '}')),
        'envelope-masked': (0x20, frame(1, env(type='chat.send', id='mk', data={'k': 'v' * 40}), mask=b'\x12\x34\x56\x78')),
        'ping-pong-close': (0, frame(9, 'p1') + frame(10, '') + frame(8, struct.pack('>H', 1000) + b'bye')),
        'close-bad-code': (0, frame(8, struct.pack('>H', 999))),
        'close-short': (0, frame(8, b'\x03')),
        'fragmented': (0x20, frame(1, '{"type":"f","id":"fr', fin=False) + frame(9, 'mid') + frame(0, 'ag","data":1', fin=False) + frame(0, '}')),
        'fragment-flood': (0, frame(1, '{', fin=False) + b''.join(frame(0, ' ', fin=False) for _ in range(300))),
        'continuation-without-start': (0, frame(0, 'x')),
        'binary-on-envelope': (0, frame(2, b'\x00\x01\x02')),
        'invalid-utf8': (0, frame(1, b'{"type":"\xc3\x28"}')),
        'utf8-split-fragments': (0, frame(1, b'{"type":"\xe2\x82', fin=False) + frame(0, b'\xac"}')),
        'too-big': (0, frame(1, '{"type":"big","data":"' + 'x' * 5000 + '"}')),
        'near-service-limit': (0x20, frame(1, '{"type":"big","id":"n1","data":"' + 'x' * 2700 + '"}') + frame(1, '{"type":"big","id":"n2","data":"' + 'x' * 3100 + '"}')),
        'unmasked': (0, frame(1, env(type='a'), masked=False)),
        'reserved-opcode': (0, frame(3, 'x') + frame(11, 'y')),
        'rsv-without-deflate': (0, frame(1, env(type='a'), rsv=0x40)),
        'control-too-long': (0, frame(9, 'p' * 130)),
        'rate-limit': (0, b''.join(T(env(type='r', id=i)) for i in range(230))),
        'deflate-ok': (0x28, frame(1, deflate(env(type='z', id='zz', data={'t': 'compressed ' * 20})), rsv=0x40) + T(env(type='plain'))),
        'deflate-bomb': (0x08, frame(1, deflate('{"type":"b","data":"' + 'A' * 20000 + '"}'), rsv=0x40)),
        'deflate-garbage': (0x08, frame(1, b'\xff\xff\xff\xff', rsv=0x40)),
        'deflate-bad-utf8': (0x08, frame(1, deflate(b'{"type":"\xff"}'), rsv=0x40)),
        'deflate-fragmented': (0x08, frame(1, deflate(env(type='fz', data='abc' * 30))[:10], rsv=0x40, fin=False) + frame(0, deflate(env(type='fz', data='abc' * 30))[10:])),
        'deflate-binary-raw': (0x18, frame(2, deflate(b'\x00' * 300), rsv=0x40)),
        'raw-text-binary': (0x10, frame(1, 'hello raw') + frame(2, b'\x00\xff' * 20) + frame(1, 'all:x')),
        'raw-too-big': (0x10, frame(2, b'x' * 3000)),
        'pushes': (0x80, T(env(type='a'))),
        'pushes-deflate-raw': (0x98, frame(2, b'bin')),
        'service-gone': (0x60, T(env(type='a', id='gone')) + T(env(type='b', id='gone2'))),
        'split-1': (0x21, T(env(type='s', id='one', data={'a': 1})) + frame(9, '')),
        'split-3': (0x23, T(env(type='s', id='two')) + frame(8, struct.pack('>H', 1001))),
        'split-64-deflate': (0x2e, frame(1, deflate(env(type='z', id='z64', data='q' * 300)), rsv=0x40)),
        'len16-len64': (0, frame(1, env(type='l', data='y' * 200)) + bytes([0x81, 0xff]) + struct.pack('>Q', 5) + b'\0\0\0\0' + b'{"t":'),
        'len64-huge': (0, bytes([0x81, 0xff]) + struct.pack('>Q', 1 << 62) + b'\0\0\0\0'),
    }
    s['shutdown'] = (0x20, T(env(type='a', id='s1')))
    s['heartbeats'] = (0x04, T(env(type='a')) + frame(10, '') + frame(9, 'x') + T(env(type='b')))
    for name, (opt, data) in s.items():
        opt2 = {'shutdown': 1, 'heartbeats': 2}.get(name, 0)
        seed('ws', name, bytes([opt, opt2]) + data)


# ---------------------------------------------------------------- service
def delim(m):
    b = m.SerializeToString()
    return varint(len(b)) + b


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7f) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def delim_raw(member, body):
    inner = varint(member << 3 | 2) + varint(len(body)) + body
    return varint(len(inner)) + inner


def msg(**kw):
    m = pb.ServiceMessage()
    for k, v in kw.items():
        getattr(m, k).CopyFrom(v)
    return delim(m)


REQ = 4 | 1 << 32   # the fixture's pending HTTP request (service.cc)
C0, C1, C2, C3 = '0.1', '1.2', '2.3', '3.4'   # the fixture's connections (slot.generation; service.cc checks them)
HB = pb.ServiceMessage(heartbeat=pb.Heartbeat(timestamp_ms=5)).SerializeToString()   # one member, no length


def service_seeds():
    O = pb.WebSocketOutbound
    s = {
        'push-room-except': msg(ws_outbound=O(room='lobby', event='chat.message', payload=b'{"text":"hi"}', except_connections=[C1, '9.9', 'x'], op_id=1)),
        'push-all': msg(ws_outbound=O(broadcast_all=True, event='news', payload=b'{"n":[1,2,3],"s":"' + b'long text ' * 30 + b'"}', op_id=2)),
        'push-conn': msg(ws_outbound=O(connection_id=C2, event='direct', payload=b'null')) + msg(ws_outbound=O(connection_id=C3, event='other-group')),
        'push-stale-and-bad': msg(ws_outbound=O(connection_id='0.2', event='e', op_id=3)) + msg(ws_outbound=O(connection_id='abc', event='e')) + msg(ws_outbound=O(event='no-target', op_id=4)),
        'push-bad-json': msg(ws_outbound=O(room='lobby', event='e', payload=b'{"a":', op_id=5)) + msg(ws_outbound=O(room='lobby', event='', payload=b'1', op_id=6)),
        'push-many-tokens': msg(ws_outbound=O(broadcast_all=True, event='t', payload=b'[' + b','.join([b'1'] * 6000) + b']')),
        'push-deep': msg(ws_outbound=O(broadcast_all=True, event='d', payload=b'[' * 129 + b']' * 129)),
        'push-escape-event': msg(ws_outbound=O(connection_id=C0, event='a"b\\c\n', payload=b'"s"')),
        'push-flood': b''.join(msg(ws_outbound=O(broadcast_all=True, event='f', payload=b'"' + b'z' * 4000 + b'"')) for _ in range(12)),
        'rooms-join-leave': msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C2, room='lobby', op_id=10)) + msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C0, room='a', operation=1, op_id=11)) + msg(ws_outbound=O(room='lobby', event='after')),
        'rooms-bad': msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C0, room='', op_id=12)) + msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C3, room='x', op_id=13)) + msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C1, room='r' * 127, op_id=14)),
        'rooms-fill': b''.join(msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=(C0, C1, C2)[i % 3], room='room%d' % i, op_id=100 + i)) for i in range(60)),
        'rooms-query': msg(rooms_query=pb.RoomsQuery(query_id=1, connection_id=C0)) + msg(rooms_query=pb.RoomsQuery(query_id=2, connection_id='7.7')),
        'room-count': msg(room_count_query=pb.RoomCountQuery(query_id=3, room='lobby')) + msg(room_count_query=pb.RoomCountQuery(query_id=4, room='none', timeout_ms=99999)),
        'close-conn': msg(close_connection=pb.CloseConnection(connection_id=C1, code=4000, reason='bye', op_id=20)) + msg(ws_outbound=O(connection_id=C1, event='late')),
        'close-bad-codes': msg(close_connection=pb.CloseConnection(connection_id=C2, code=1005, op_id=21)) + msg(close_connection=pb.CloseConnection(connection_id=C2, code=99999, op_id=22)) + msg(close_connection=pb.CloseConnection(connection_id=C2, reason='r' * 123)),
        'heartbeat': msg(heartbeat=pb.Heartbeat(timestamp_ms=1)) + msg(heartbeat=pb.Heartbeat(reply=True)),
        'http-response': msg(http_response=pb.HttpResponse(request_id=REQ, status=201, headers=[pb.Header(name='Content-Type', value='application/json'), pb.Header(name='Set-Cookie', value='a=b'), pb.Header(name='Connection', value='close')], body=b'{"id":7}')),
        'http-response-bad-header': msg(http_response=pb.HttpResponse(request_id=REQ, status=200, headers=[pb.Header(name='X-A', value='1\r\nInjected: yes')])) + msg(heartbeat=pb.Heartbeat()),
        'http-response-tab-name': msg(http_response=pb.HttpResponse(request_id=REQ, headers=[pb.Header(name='Transfer-Encoding\t', value='chunked')])),
        'http-response-status': msg(http_response=pb.HttpResponse(request_id=REQ, status=101)) + msg(http_response=pb.HttpResponse(request_id=REQ, status=700)),
        'http-response-304-204': msg(http_response=pb.HttpResponse(request_id=REQ, status=304, body=b'ignored')),
        'http-response-unknown': msg(http_response=pb.HttpResponse(request_id=12345, status=200)) + msg(http_response=pb.HttpResponse(request_id=REQ + (1 << 32))),
        'ws-response': msg(ws_response=pb.WebSocketResponse(connection_id=C0, correlation_id='m1', data=b'{"ok":1}')) + msg(ws_response=pb.WebSocketResponse(connection_id=C1, correlation_id='42', error=pb.ErrorResponse(code=403, type='FORBIDDEN', message='no "way"', details='{"why":1}'))),
        'ws-response-bad': msg(ws_response=pb.WebSocketResponse(connection_id=C0, correlation_id='m1', data=b'{bad')) + msg(ws_response=pb.WebSocketResponse(connection_id=C1, correlation_id='42', error=pb.ErrorResponse(details='{not json'))) + msg(ws_response=pb.WebSocketResponse(connection_id=C0, correlation_id='unknown')),
        'register-again': msg(register_service=pb.RegisterService(name='chat')),
        'unknown-members': msg(command_result=pb.CommandResult(op_id=1)) + msg(error=pb.ErrorResponse(code=1)) + msg(ws_inbound=pb.WebSocketInbound(connection_id=C0)),
        'multi-member-frame': varint(2 * len(HB)) + HB + HB,
        'bad-varint': b'\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01',
        'over-max-frame': varint(70000) + b'\x00' * 10,
        'garbage-frame': b'\x05\x0a\x03\xff\xff\xff',
        'wrong-wire-type': b'\x02\x08\x01' + msg(heartbeat=pb.Heartbeat()),
        'truncated-sub': b'\x03\xb2\x01\x09',
    }
    # Findings (reproducers of fixed bugs; see tests/fuzz/README.md).
    s['finding-response-header-without-value'] = msg(http_response=pb.HttpResponse(request_id=REQ, headers=[pb.Header(name='X-Empty')]))
    s['finding-room-operation-out-of-enum'] = msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C0, room='lobby', operation=44, op_id=9))
    # callback fields (payload, body, data) sent with a scalar wire type: key, then a fixed64
    scalar = lambda member, m, field: delim_raw(member, m.SerializeToString() + bytes([field << 3 | 1]) + b'"abcdef"')
    s['finding-payload-scalar-wire-type'] = scalar(22, O(room='lobby', event='e'), 5) + scalar(22, O(connection_id=C2, event='e'), 5)
    s['scalar-wire-type-body-data'] = scalar(4, pb.HttpResponse(request_id=REQ, status=200), 4) + scalar(24, pb.WebSocketResponse(connection_id=C0, correlation_id='m1'), 3)
    for name, data in s.items():
        seed('service', name, b'\x00\x00' + data)
    # A fresh link: registration first.
    W = pb.WebSocketConfig
    R = pb.HttpRoute
    fresh = {
        'fresh-second-instance': msg(register_service=pb.RegisterService(name='chat', version='2', instance_id='i2', websocket=W(enabled=True, path='/ws', compression=True))) + msg(ws_outbound=O(room='lobby', event='from-2')),
        'fresh-new-service': msg(register_service=pb.RegisterService(name='svc2', routes=[R(method='GET', path='/two/:x', auth=True, roles=['a', 'b'], cors_origins=['https://x.example']), R(method='*', path='/api/:x')], websocket=W(enabled=True, path='/two', raw=True, heartbeat_interval_ms=500, max_message_size_bytes=100, max_connections_per_user=1))),
        'fresh-conflicts': msg(register_service=pb.RegisterService(name='svc3', routes=[R(method='GET', path='/items/:n')])),
        'fresh-ws-conflict': msg(register_service=pb.RegisterService(name='svc4', websocket=W(enabled=True, path='/ws'))),
        'fresh-bad-routes': msg(register_service=pb.RegisterService(name='svc5', routes=[R(method='get', path='/x'), R(method='GET', path='x//y')])),
        'fresh-reserved': msg(register_service=pb.RegisterService(name='svc6', routes=[R(method='GET', path='/health')])),
        'fresh-bad-name': msg(register_service=pb.RegisterService(name='bad name!')),
        'fresh-not-register': msg(heartbeat=pb.Heartbeat()),
        'fresh-many-routes': msg(register_service=pb.RegisterService(name='svc7', routes=[R(method='GET', path='/r%d/:p' % i) for i in range(300)])),
        'fresh-instance-other-path': msg(register_service=pb.RegisterService(name='chat', websocket=W(enabled=True, path='/elsewhere'))),
    }
    for name, data in fresh.items():
        seed('service', name, b'\x01\x00' + data)
    base = msg(ws_outbound=O(room='lobby', event='m', payload=b'{"a":1}')) + msg(http_response=pb.HttpResponse(request_id=REQ, status=200, body=b'ok')) + msg(ws_response=pb.WebSocketResponse(connection_id=C0, correlation_id='m1'))
    for name, opt in {'split-1': 0x02, 'split-3': 0x06, 'split-64': 0x0c, 'link-drops': 0x10, 'slow-clients-close': 0x20,
                      'slow-clients-drop': 0x60, 'stale-conn': 0x80}.items():
        seed('service', 'opt-' + name, bytes([opt, 0]) + base)
    seed('service', 'opt-shutdown-after', b'\x00\x01' + base)
    ghost = msg(ws_outbound=O(connection_id=C0, event='to-ghost')) + msg(ws_room_operation=pb.WebSocketRoomOperation(connection_id=C0, room='b', op_id=5)) + \
        msg(rooms_query=pb.RoomsQuery(query_id=6, connection_id=C0)) + msg(close_connection=pb.CloseConnection(connection_id=C0, op_id=7)) + msg(ws_outbound=O(room='lobby', event='after'))
    seed('service', 'opt-ghost', b'\x80\x00' + ghost)
    seed('service', 'opt-ghost-shutdown', b'\x80\x01' + ghost)
    seed('service', 'opt-shutdown-halfway', b'\x0c\x02' + base + msg(heartbeat=pb.Heartbeat()))
    seed('service', 'opt-shutdown-slow-clients', b'\x20\x01' + base)
    flood = b''.join(msg(ws_outbound=O(room='lobby', event='f', payload=b'"' + b'w' * 3000 + b'"')) for _ in range(20))
    seed('service', 'opt-slow-flood-close', b'\x20\x00' + flood)
    seed('service', 'opt-slow-flood-drop', b'\x60\x00' + flood)


# ---------------------------------------------------------------- jwt
def jwt_seeds():
    cj = lambda d: json.dumps(d, separators=(',', ':')).encode()
    full = {"sub": "u1", "preferred_username": "ann", "username": "x", "roles": ["admin", "dev"], "tenant_id": "t", "exp": FAR, "nbf": 1}
    toks = {
        'hs256-valid': ADMIN,
        'hs256-expired': EXPIRED,
        'alg-none': b64u(b'{"alg":"none"}') + '.' + b64u(b'{"sub":"u1"}') + '.',
        'alg-hs512': hs256({"sub": "u"}, {"alg": "HS512"}),
        'not-jwt': 'abc.def',
        'bad-b64': 'a!b.c$d.e%f',
        'bad-sig': ADMIN[:-4] + 'AAAA',
        'hs256-no-sub': hs256({"name": "x", "exp": FAR}),
        'hs256-escapes': hs256(b'{"sub":"Jos\\u00e9 \\ud83d\\ude00\\n","roles":["a\\"b"],"exp":4102444800}'),
        'hs256-nul-escape': hs256(b'{"sub":"a\\u0000admin","exp":4102444800}'),
        'hs256-trailing': hs256(b'{"sub":"u1"} {"sub":"u2"}'),
        'hs256-long-sub': hs256({"sub": "s" * 200, "exp": FAR}),
        'hs256-exp-types': hs256(b'{"sub":"u","exp":true,"nbf":null}'),
    }
    for name, t in toks.items():
        seed('jwt', 'raw-' + name, b'\x00' + t.encode())
    claims = {
        'full': cj(full),
        'roles-16': cj({"sub": "r", "roles": ["r%d" % i for i in range(16)], "tenant_id": "\u00e9t\u00e9", "exp": FAR}),
        'roles-many': cj({"sub": "r", "roles": ["r%d" % i for i in range(40)], "exp": FAR}),
        'role-number': cj({"sub": "r", "roles": ["a", 3], "exp": FAR}),
        'exp-nan': b'{"sub":"u","exp":nan}',
        'exp-string': b'{"sub":"u","exp":"4102444800"}',
        'nbf-future': cj({"sub": "u", "nbf": FAR}),
        'lone-surrogate': b'{"sub":"\\ud800x","username":"\\udc00"}',
        'bad-utf8': b'{"sub":"\xc0\xaf"}',
        'nested': b'{"sub":"u","x":{"y":[1,{"z":2}]},"roles":[["a"],"b"]}',
        'cut-multibyte': ('{"sub":"' + 'a' * 126 + '\u00e9\u00e9"}').encode(),
    }
    for mode, tag in ((2, 'hs'), (3, 'rs-pem'), (4, 'rs-jwks'), (5, 'es-pem'), (6, 'es-jwks')):
        for name, c in claims.items():
            if mode > 2 and name not in ('full', 'roles-16', 'exp-nan'):
                continue
            seed('jwt', '%s-%s' % (tag, name), bytes([mode]) + c)
    seed('jwt', 'hs-header-kid', b'\x02{"alg":"HS256","kid":"k1","typ":"JWT"}\xff' + cj(full))
    seed('jwt', 'hs-header-alg-twice', b'\x02{"alg":"none","alg":"HS256"}\xff' + cj(full))
    seed('jwt', 'rs-header-es', b'\x03{"alg":"ES256"}\xff' + cj(full))
    seed('jwt', 'rs-jwks-kid', b'\x04{"alg":"RS256","kid":"r2"}\xff' + cj(full))
    seed('jwt', 'es-jwks-kid-other', b'\x06{"alg":"ES256","kid":"r2"}\xff' + cj(full))
    # --jwt-keys files (mode 7): public keys only.
    ec_pem = (b'-----BEGIN PUBLIC KEY-----\n'
              b'MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE1dh2iP/kIpqXsX95ZjKwqUaa9bBb\n'
              b'411avv1F3ruSwYboWbegyouHYcdVp5I4q7VKjCfSfIe98KMi5e1XvWWuWw==\n'
              b'-----END PUBLIC KEY-----\n')
    seed('jwt', 'keys-pem-ec', b'\x07' + ec_pem)
    seed('jwt', 'keys-pem-bad', b'\x07-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n')
    seed('jwt', 'keys-pem-unterminated', b'\x07' + ec_pem[:60])
    x = b64u(bytes(range(1, 33)))
    jwks = {
        'keys-jwks-rsa': {"keys": [{"kty": "RSA", "kid": "r", "use": "sig", "alg": "RS256", "n": b64u(b'\xc3' + bytes(range(255))), "e": "AQAB"}]},
        'keys-jwks-ec-bad-point': {"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": x}]},
        'keys-jwks-mixed': {"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-384", "x": x, "y": x}, {"kty": "OKP"}], "other": [1]},
        'keys-jwks-empty': {"keys": []},
        'keys-jwks-use-alg': {"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "use": "enc", "x": x, "y": x}, {"kty": "RSA", "alg": "RS512", "n": "AQAB", "e": "AQAB"}]},
        'keys-jwks-not-array': {"keys": {"kty": "RSA"}},
    }
    for name, d in jwks.items():
        seed('jwt', name, b'\x07' + cj(d))
    seed('jwt', 'keys-jwks-broken', b'\x07{"keys":[{"kty":"RSA","n":"AQAB"')


# ---------------------------------------------------------------- config
def config_seeds():
    s = {
        'all-settings': '''# linkd.conf
listen = 127.0.0.1:3000
socket = /tmp/linkd-fuzz-never.sock
socket_mode = 0660
log_level = debug
max_connections = 100
max_http_connections = 10
max_rooms = 1000
max_memberships = 5000
max_services = 8
max_message_size = 64k
max_header_size = 16k
max_body_size = 1m
max_frame_size = 4m
http_timeout = 30s
handler_timeout = 500ms
heartbeat_interval = 1m
max_connections_per_user = 5
max_connections_per_ip = 0
rate_limit = 100
rate_burst = 200
max_outbound = 1m
outbound_policy = drop
allowed_origins = "https://a.example, http://localhost:3000"
jwt_secret = "s3cret # not a comment?"
shutdown_timeout = 10s
''',
        'comments-blank': '\n\n   # only comments\n\t\n# x = y\n',
        'crlf-tabs': 'max_rooms\t=\t12\r\nlog_level = warn \r\n',
        'unknown-key': 'no_such_setting = 1\n',
        'config-in-file': 'config = /etc/other.conf\n',
        'no-equals': 'max_rooms 12\n',
        'bad-number': 'max_rooms = 12x\n',
        'negative': 'max_connections = -5\n',
        'out-of-range': 'max_services = 99999\n',
        'overflow': 'max_body_size = 99999999999999999999g\n',
        'units': 'http_timeout = 2m\nmax_outbound = 2MB\nmax_message_size = 1kb\nheartbeat_interval = 250\n',
        'bad-duration': 'http_timeout = 5h\n',
        'bad-level': 'log_level = verbose\n',
        'bad-policy': 'outbound_policy = maybe\n',
        'long-string': 'jwt_secret = ' + 'k' * 300 + '\n',
        'long-line': 'allowed_origins = ' + 'o' * 3000 + '\n',
        'quotes-empty': 'jwt_secret = ""\nallowed_origins = "\n',
        'dash-key': 'max-rooms = 5\nMAX_ROOMS = 6\n',
        'frame-vs-body': 'max_body_size = 4m\nmax_frame_size = 1m\n',
        'bad-listen': 'listen = 3000\n',
        'bad-port': 'listen = 127.0.0.1:70000\n',
        'bad-socket-mode': 'socket_mode = 0999\n',
        'long-socket': 'socket = /' + 's' * 200 + '\n',
        'jwt-keys-missing': 'jwt_keys = /nonexistent/keys.pem\n',
        'nul-byte': 'max_rooms = 1\x002\n',
        'equals-first': '= 5\n',
        'service-allow': 'service_allow = chat uid:0, gid:root\nservice_allow = api* uid:nobody gid:0\nservice_allow = "x uid:1"\n',
        'service-allow-bad': 'service_allow = chat\nservice_allow = * uid:0\nservice_allow = a** uid:x:y\n',
        'service-allow-many': ''.join('service_allow = s%d uid:%d\n' % (i, i) for i in range(70)),
        'admin-cluster-history': 'admin_listen = 127.0.0.1:9900\nadmin_role = ops\nnats_url = nats://127.0.0.1:4222\nnode_id = edge-1.local\nhistory_memory = 2m\n',
        'admin-open': 'admin_listen = 0.0.0.0:9900\n',
        'node-id-bad': 'nats_url = nats://x:1\nnode_id = a.b/c\nnats_creds = /nonexistent\nnats_tls_ca = /nonexistent\n',
        'tls-and-newer': 'tls_listen = 127.0.0.1:3443\ntls_cert = /nonexistent/cert.pem\ntls_key = /nonexistent/key.pem\ntls_client_ca = /nonexistent/ca.pem\nregister_timeout = 5s\nmax_http_connections_per_ip = 4\n',
    }
    for name, text in s.items():
        seed('config', name, text.encode('latin-1'))


http_seeds()
ws_seeds()
service_seeds()
jwt_seeds()
config_seeds()
print('gen_corpus: %d seed files written' % written)
