#!/usr/bin/env bash
# Rooms and pushes: two clients in a room, except lists of 2+, broadcast-all,
# direct sends, rooms query, leave, close command, DISCONNECTED with rooms,
# abrupt disconnects leaving no membership, full room/membership tables.
. "$(dirname "$0")/lib.sh"

linkd_start || exit 0
svc_start chat --name chat --instance chat-1 --ws /ws/chat || fail "chat service registers" "$(cat "$SVC_OUT")"
svc_start other --name other --instance other-1 --ws /ws/other || fail "other ws service registers" "$(cat "$SVC_OUT")"

export LINKD_PORT LINKD_URL CHAT_OUT=${SVC_OUTS[chat]}
timeout 150 $PY - <<'EOF'
import os, sys, time, json
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_rooms')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/ws/chat' % port
CHAT = os.environ['CHAT_OUT']
M = lambda n: metric(base, n)

A, B, C, D = [WS(url) for _ in range(4)]
ids = {}
for name, w in zip('ABCD', (A, B, C, D)):
    ids[name] = w.whoami()
a, b, cc, d = ids['A'], ids['B'], ids['C'], ids['D']
c.ok('four connections with distinct ids', len(set(ids.values())) == 4 and None not in ids.values(), ids)
O = WS('ws://127.0.0.1:%s/ws/other' % port)
O.whoami()

def is_push(ev):
    return lambda m: isinstance(m, dict) and m.get('type') == ev

def nothing(w, ev):
    w.sync()        # anything sent before the echo reply has arrived by now
    return not [m for m in w.inbox if isinstance(m, dict) and m.get('type') == ev]

def t_join_and_emit():
    r = A.call('do.join', {'room': 'r1'})
    c.eq('join acknowledged (CommandResult ok)', r and r.get('data'), {'ok': True})
    for w in (B, C):
        w.call('do.join', {'room': 'r1'})
    r = A.call('do.join', {'room': 'r1'})
    c.eq('joining a room twice is fine', r and r.get('data'), {'ok': True})
    c.eq('linkd_rooms = 1', M('linkd_rooms'), 1)
    c.eq('linkd_memberships = 3 (a double join counts once)', M('linkd_memberships'), 3)
    A.call('do.emit', {'room': 'r1', 'event': 'room.msg', 'data': {'n': 1, 's': 'hé'}})
    m = B.expect(is_push('room.msg'))
    c.eq('two clients in one room: the message reaches the other (exact envelope)', m, {'type': 'room.msg', 'data': {'n': 1, 's': 'hé'}})
    c.ok('a third member gets it too', C.expect(is_push('room.msg')) is not None, C.inbox)
    c.ok('the sender, a member, gets it (no except)', A.expect(is_push('room.msg')) is not None, A.inbox)
    c.ok('a non-member does not get it', nothing(D, 'room.msg'), D.inbox)
    c.ok("another service's client does not get it", nothing(O, 'room.msg'), O.inbox)
c.run('join and emit', t_join_and_emit)

def t_except():
    A.call('do.emit', {'room': 'r1', 'event': 'ex2', 'data': 2, 'except': [a, b]})
    c.eq('except [a,b]: c gets it', C.expect(is_push('ex2')), {'type': 'ex2', 'data': 2})
    c.ok('except [a,b]: a does not', nothing(A, 'ex2'), A.inbox)
    c.ok('except [a,b]: b does not (second entry of the list honoured)', nothing(B, 'ex2'), B.inbox)
    A.call('do.emit', {'room': 'r1', 'event': 'ex3', 'data': 3, 'except': [b, cc, a]})
    c.ok('except all three members: nobody gets it', all(nothing(w, 'ex3') for w in (A, B, C)), None)
    bogus = ['%d.%d' % (i, i) for i in range(900, 940)]
    A.call('do.emit', {'room': 'r1', 'event': 'ex4', 'data': 4, 'except': bogus + [cc] + bogus + [a]})
    c.ok('long except list (82 ids): b gets it', B.expect(is_push('ex4')) is not None, B.inbox)
    c.ok('long except list: listed members a and c do not', nothing(A, 'ex4') and nothing(C, 'ex4'), None)
c.run('except lists', t_except)

def t_all_and_direct():
    A.call('do.all', {'event': 'everyone', 'data': {'hi': 1}})
    for n, w in zip('ABCD', (A, B, C, D)):
        c.eq('broadcast-all reaches %s' % n, w.expect(is_push('everyone')), {'type': 'everyone', 'data': {'hi': 1}})
    c.ok("broadcast-all stays on the service's path", nothing(O, 'everyone'), O.inbox)
    A.call('do.all', {'event': 'most', 'data': 0, 'except': [a, d]})
    c.ok('broadcast-all with except [a,d]: b and c get it',
         B.expect(is_push('most')) is not None and C.expect(is_push('most')) is not None, None)
    c.ok('broadcast-all with except [a,d]: a and d do not', nothing(A, 'most') and nothing(D, 'most'), None)
    r = A.call('do.send', {'to': d, 'event': 'dm', 'data': 'psst'})
    c.eq('direct send acknowledged', r and r.get('data'), {'ok': True})
    c.eq('direct send reaches its target', D.expect(is_push('dm')), {'type': 'dm', 'data': 'psst'})
    c.ok('direct send reaches nobody else', all(nothing(w, 'dm') for w in (A, B, C)), None)
    r = A.call('do.send', {'to': '9999.9999', 'event': 'dm', 'data': 1})
    c.ok('send to an unknown id: CommandResult not ok with an error', r and r['data'].get('ok') is False and r['data'].get('error'), r)
c.run('broadcast and direct', t_all_and_direct)

def t_rooms_query():
    r = A.call('do.rooms')
    c.eq('rooms query: a is in r1', r and r['data'].get('rooms'), ['r1'])
    A.call('do.join', {'room': 'r2'})
    A.call('do.join', {'room': 'r3'})
    r = A.call('do.rooms')
    c.eq('rooms query after two more joins', r and r['data'].get('rooms'), ['r1', 'r2', 'r3'])
    c.eq('linkd_rooms = 3', M('linkd_rooms'), 3)
    r = A.call('do.leave', {'room': 'r2'})
    c.eq('leave acknowledged', r and r.get('data'), {'ok': True})
    c.eq('an emptied room is freed (linkd_rooms = 2)', M('linkd_rooms'), 2)
    r = A.call('do.rooms')
    c.eq('rooms query after leave', r and r['data'].get('rooms'), ['r1', 'r3'])
    A.call('do.emit', {'room': 'r2', 'event': 'gone', 'data': 1})
    c.ok('after leaving, no message from that room', nothing(A, 'gone'), A.inbox)
    r = D.call('do.rooms')
    c.eq('rooms query for a connection in no room', r and r['data'].get('rooms'), [])
    r = A.call('do.rooms', {'conn': b})
    c.eq("rooms query about another connection", r and r['data'].get('rooms'), ['r1'])
    r = A.call('do.rooms', {'conn': '9999.1'})
    c.ok('rooms query for an unknown connection: error', r and r['data'].get('error'), r)
    r = A.call('do.join', {'room': 'rx', 'conn': '9999.1'})
    c.ok('join for an unknown connection: CommandResult not ok', r and r['data'].get('ok') is False, r)
    r = A.call('do.join', {'room': 'rd', 'conn': d})
    c.eq('the service can put another connection in a room', r and r.get('data'), {'ok': True})
    r = D.call('do.rooms')
    c.eq("... and it shows in that connection's rooms", r and r['data'].get('rooms'), ['rd'])
c.run('rooms query and leave', t_rooms_query)

def t_disconnects():
    # memberships now: A r1 r3, B r1, C r1, D rd  -> 5
    c.eq('linkd_memberships = 5 before disconnects', M('linkd_memberships'), 5)
    B.close(1000)
    ev = svc_event(CHAT, 'DISCONNECTED', b)
    c.ok('DISCONNECTED on a normal close still lists the rooms', ev is not None and ev['rooms'] == ['r1'], ev)
    C.call('do.join', {'room': 'r3'})
    C.abort()
    ev = svc_event(CHAT, 'DISCONNECTED', cc)
    c.ok('abrupt disconnect: DISCONNECTED lists both rooms', ev is not None and sorted(ev['rooms']) == ['r1', 'r3'], ev)
    wait_until(lambda: M('linkd_memberships') == 3, 5)
    c.eq('abrupt disconnect leaves no membership (linkd_memberships = 3)', M('linkd_memberships'), 3)
    c.eq('linkd_ws_connections = 2 on the chat path + 1 other', M('linkd_ws_connections'), 3)
    A.call('do.emit', {'room': 'r1', 'event': 'after', 'data': 1})
    c.ok('room still works for the one left', A.expect(is_push('after')) is not None, A.inbox)
    # a client that vanishes mid-message (frame header promises more bytes than sent)
    E = WS(url)
    e = E.whoami()
    E.call('do.join', {'room': 'r1'})
    E.call('do.join', {'room': 'r9'})
    E.ws.sock.send(b'\x81\xfe\x03\xe8\x00\x00\x00\x00' + b'{"type":"echo","data":"')
    E.abort()
    ev = svc_event(CHAT, 'DISCONNECTED', e)
    c.ok('client vanishing mid-message: DISCONNECTED with its rooms', ev is not None and sorted(ev['rooms']) == ['r1', 'r9'], ev)
    wait_until(lambda: M('linkd_memberships') == 3 and M('linkd_rooms') == 3, 5)
    c.eq('client vanishing mid-message: memberships freed', M('linkd_memberships'), 3)
    c.eq('... and its room r9 freed (rooms r1 r3 rd)', M('linkd_rooms'), 3)
    # close command from the service
    r = A.call('do.close', {'to': d, 'code': 4001, 'reason': 'kicked'})
    c.eq('close command acknowledged', r and r.get('data'), {'ok': True})
    cl = D.wait_close(5)
    c.eq('close command: the client gets close 4001 with the reason', cl, (4001, 'kicked'))
    ev = svc_event(CHAT, 'DISCONNECTED', d)
    c.ok('close command: DISCONNECTED lists its room', ev is not None and ev['rooms'] == ['rd'], ev)
    wait_until(lambda: M('linkd_memberships') == 2, 5)
    c.eq('close command: memberships freed', M('linkd_memberships'), 2)
    r = A.call('do.close', {'to': d, 'code': 4001})
    c.ok('close command for a gone connection: not ok', r and r['data'].get('ok') is False, r)
    A.close()
    O.close()
    wait_until(lambda: M('linkd_ws_connections') == 0, 5)
    c.eq('all closed: linkd_ws_connections = 0', M('linkd_ws_connections'), 0)
    c.eq('all closed: linkd_memberships = 0', M('linkd_memberships'), 0)
    c.eq('all closed: linkd_rooms = 0', M('linkd_rooms'), 0)
c.run('disconnects', t_disconnects)

def t_many_members():
    ws = [WS(url) for _ in range(30)]
    for w in ws:
        w.call('do.join', {'room': 'big'})
    c.eq('30 members', M('linkd_memberships'), 30)
    ws[0].call('do.emit', {'room': 'big', 'event': 'fan', 'data': {'x': 'y' * 1000}, 'except': [ws[0].whoami()]})
    got = sum(1 for w in ws[1:] if w.expect(is_push('fan'), 5) == {'type': 'fan', 'data': {'x': 'y' * 1000}})
    c.eq('one room message reaches all 29 other members intact', got, 29)
    for w in ws[::2]:
        w.abort()
    for w in ws[1::2]:
        w.close()
    wait_until(lambda: M('linkd_memberships') == 0 and M('linkd_ws_connections') == 0, 5)
    c.eq('30 members gone (half abruptly): memberships 0', M('linkd_memberships'), 0)
    c.eq('... connections 0', M('linkd_ws_connections'), 0)
c.run('many members', t_many_members)
EOF
rc=$?
[ $rc -eq 0 ] || fail "ws rooms script" "python exited $rc"
check "linkd still running" linkd_alive
linkd_stop

# Full room and membership tables refuse joins with an error, never a crash
LINKD_PORT= LINKD_SOCK=$T_TMP/small.sock
linkd_start --max-rooms 2 --max-memberships 3 || exit 0
svc_start chat2 --name chat --instance chat-2 --ws /ws/chat || fail "chat service registers (small tables)" "$(cat "$SVC_OUT")"
export LINKD_PORT LINKD_URL
timeout 60 $PY - <<'EOF'
import os, sys
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_rooms')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/ws/chat' % port
def t():
    X, Y = WS(url), WS(url)
    c.eq('join ra', X.call('do.join', {'room': 'ra'})['data'], {'ok': True})
    c.eq('join rb', X.call('do.join', {'room': 'rb'})['data'], {'ok': True})
    r = X.call('do.join', {'room': 'rc'})
    c.ok('room table full (--max-rooms 2): join refused with an error', r and r['data'].get('ok') is False and r['data'].get('error'), r)
    c.eq('Y joins ra (3rd membership)', Y.call('do.join', {'room': 'ra'})['data'], {'ok': True})
    r = Y.call('do.join', {'room': 'rb'})
    c.ok('membership table full (--max-memberships 3): join refused with an error', r and r['data'].get('ok') is False and r['data'].get('error'), r)
    c.eq('linkd_memberships stays 3', metric(base, 'linkd_memberships'), 3)
    X.call('do.leave', {'room': 'rb'})
    c.eq('after a leave frees room rb, a new room can be made', Y.call('do.join', {'room': 'rc'})['data'], {'ok': True})
    X.call('do.emit', {'room': 'ra', 'event': 'still', 'data': 1})
    c.ok('rooms still deliver after refusals', Y.expect(lambda m: isinstance(m, dict) and m.get('type') == 'still') is not None, Y.inbox)
c.run('full tables', t)
EOF
rc=$?
[ $rc -eq 0 ] || fail "ws full-tables script" "python exited $rc"
check "linkd alive after full-table refusals" linkd_alive
exit 0
