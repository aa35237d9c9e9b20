#!/usr/bin/python3
"""Writes the seed corpus of the C library's harness (tests/fuzz/sdk_c.c) to
tests/fuzz/corpus/sdk_c/. Run after `make build/linkd_pb2.py`:

    /usr/bin/python3 tests/fuzz/gen_sdk_c_corpus.py

Each seed is one option byte (see sdk_c.c) and the bytes linkd sends.
"""
import os, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'build'))
import linkd_pb2 as pb  # noqa: E402
from google.protobuf.internal.encoder import _VarintBytes  # noqa: E402

OUT = os.path.join(ROOT, 'tests', 'fuzz', 'corpus', 'sdk_c')
REGISTERED, SMALL, RAW, DEFER, STOP, CLOSE = 1, 2, 4, 0x20, 0x40, 0x80
CHUNK1, CHUNK7, CHUNK300 = 1 << 3, 2 << 3, 3 << 3


def frame(**kw):
    m = pb.ServiceMessage(**kw)
    b = m.SerializeToString()
    return _VarintBytes(len(b)) + b


def user(uid='u1', roles=('user',), auth=True):
    return pb.UserContext(user_id=uid, username=uid + '-name', roles=list(roles), tenant_id='t1', authenticated=auth)


def http(rid, method, route, path, params=(), headers=(), body=b'', query='', u=None):
    return frame(http_request=pb.HttpRequest(
        request_id=rid, method=method, path=path, route=route, query=query, body=body,
        params=[pb.Param(name=n, value=v) for n, v in params],
        headers=[pb.Header(name=n, value=v) for n, v in headers],
        user=u, remote_address='127.0.0.1:5555'))


def inbound(conn, type_, data=b'', corr='', u=None, binary=False):
    return frame(ws_inbound=pb.WebSocketInbound(connection_id=conn, service_name='fuzz', message_type=type_,
                                                payload=data, correlation_id=corr, user=u, binary=binary))


def event(conn, kind, rooms=(), u=None, code=0):
    return frame(ws_connection_event=pb.WebSocketConnectionEvent(
        connection_id=conn, service_name='fuzz', path='/ws', user=u, remote_address='127.0.0.1:6000',
        event_type=kind, rooms=list(rooms), connected_at_ms=1795964633212, close_code=code))


REG_OK = frame(register_result=pb.RegisterResult(ok=True, linkd_version='0.1.0', max_frame_bytes=65536))
seeds = {
    'http-get-params-headers': (REGISTERED, http(7, 'GET', '/items/:id', '/items/42', [('id', '42')],
                                                 [('Host', 'x'), ('Content-Type', 'text/plain'), ('X-A', 'b')],
                                                 b'body', 'a=1&b=%20', user())),
    'http-any-and-unknown-route': (REGISTERED, http(8, 'DELETE', '/any', '/any') + http(9, 'GET', '/nope', '/nope')),
    'http-roles': (REGISTERED, http(10, 'POST', '/admin', '/admin', u=user(roles=('user',))) +
                   http(11, 'POST', '/admin', '/admin', u=user(roles=('admin',))) + http(12, 'POST', '/admin', '/admin')),
    'ws-echo-join-push': (REGISTERED, event('0.1', 0, u=user()) + inbound('0.1', 'echo', b'{"room":"lobby","n":1}', 'm1', user()) +
                          inbound('0.1', 'echo', b'', '') + inbound('0.1', 'nothing.here', b'1', 'm2')),
    'ws-roles': (REGISTERED, inbound('0.1', 'admin.do', b'{}', 'a1', user(roles=('admin',))) +
                 inbound('0.1', 'admin.do', b'{}', 'a2', user()) + inbound('0.1', 'admin.do', b'{}', 'a3')),
    'conn-events': (REGISTERED, event('1.1', 0, u=user('u2', ('a', 'b'))) + event('1.1', 1, ['lobby', 'kitchen'], code=1001) +
                    event('2.1', 2, ['lobby']) + event('3.1', 3) + event('', 0)),
    'results': (REGISTERED, frame(command_result=pb.CommandResult(op_id=1, ok=True, delivered=3)) +
                frame(command_result=pb.CommandResult(op_id=2, ok=False, error=pb.ErrorResponse(code=410, type='NOT_DELIVERED', message='closing'))) +
                frame(rooms_result=pb.RoomsResult(query_id=3, rooms=['a', 'b'])) +
                frame(rooms_result=pb.RoomsResult(query_id=4, error=pb.ErrorResponse(code=404, type='NOT_FOUND'))) +
                frame(heartbeat=pb.Heartbeat(timestamp_ms=5)) + frame(heartbeat=pb.Heartbeat(reply=True)) +
                frame(error=pb.ErrorResponse(code=400, type='BAD_MESSAGE', message='m'))),
    'connect-then-results': (REGISTERED, event('0.1', 0, u=user()) + frame(command_result=pb.CommandResult(op_id=1, ok=True)) +
                             frame(rooms_result=pb.RoomsResult(query_id=2, rooms=['lobby']))),
    'register-in-input': (0, REG_OK + inbound('0.1', 'echo', b'"x"', 'r1')),
    'register-refused': (0, frame(register_result=pb.RegisterResult(ok=False, reason='path taken'))),
    'before-registration': (0, inbound('0.1', 'echo', b'"x"', 'r1') + REG_OK),
    'oversize-then-good': (REGISTERED | SMALL | CHUNK300, _VarintBytes(5000) + b'\x55' * 5000 + inbound('0.1', 'echo', b'1', 'o1')),
    'oversize-split': (REGISTERED | SMALL | CHUNK7, _VarintBytes(2000) + b'\xaa' * 2000 + inbound('0.1', 'echo', b'2', 'o2')),
    'broken-prefix': (REGISTERED, b'\xff\xff\xff\xff\xff\xff' + inbound('0.1', 'echo', b'3', 'b1')),
    'byte-by-byte': (REGISTERED | CHUNK1, inbound('0.1', 'echo', b'{"a":[1,2,{"b":"c"}]}', 'bb') + http(5, 'GET', '/any', '/any')),
    'raw-path': (REGISTERED | RAW, inbound('0.1', '', b'\x00\x01binary', 'r', binary=True) + inbound('0.1', '', b'text frame', '')),
    'deferred': (REGISTERED | DEFER, inbound('0.1', 'echo', b'{"room":"r"}', 'd1', user()) + http(6, 'GET', '/items/:id', '/items/1', [('id', '1')])),
    'stop-halfway': (REGISTERED | STOP, inbound('0.1', 'echo', b'1', 's1') * 4),
    'close-after': (REGISTERED | CLOSE, inbound('0.1', 'echo', b'1', 'c1') + b'\x10\x0a'),
    # hand-made: members with the wrong wire type, unknown members, empty frames, truncated members
    'scalar-wire-types': (REGISTERED, bytes([15, 0xaa, 0x01, 0x0c, 0x20, 0x96, 0x01, 0x0a, 0x03]) + b'3.1' + bytes([0x2a, 0x02]) + b's1' +
                          bytes([9, 0xaa, 0x01, 0x06, 0x20, 0x96, 0x01, 0x0d, 0x01, 0x02])),
    'unknown-and-empty': (REGISTERED, bytes([4, 0xfa, 0x01, 0x01, 0x00, 0, 2, 0x00, 0x00, 5, 0xaa, 0x01, 0x03, 0xff, 0xff])),
    'enum-out-of-range': (REGISTERED, event('0.9', 44)),
}

os.makedirs(OUT, exist_ok=True)
for name, (opts, body) in seeds.items():
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(bytes([opts]) + body)
print('%d seeds in %s' % (len(seeds), OUT))
