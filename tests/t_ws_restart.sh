#!/usr/bin/env bash
# The owning service dies (kill -9) and comes back: clients stay connected,
# get SERVICE_UNAVAILABLE meanwhile, rooms survive, the new instance is told
# the live connections (EXISTING, with rooms). Two instances: a connection
# stays with one instance.
. "$(dirname "$0")/lib.sh"

linkd_start || exit 0
svc_start chat --name chat --instance chat-1 --ws /ws/chat --route 'GET /chat/info' \
  || fail "chat service registers" "$(cat "$SVC_OUT")"

export LINKD_PORT LINKD_URL LINKD_SOCK CHAT_OUT=${SVC_OUTS[chat]} CHAT_PID=${SVC_PIDS[chat]} T_TMP PY
timeout 120 $PY - <<'EOF'
import os, sys, time, json, signal, subprocess
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_restart')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/ws/chat' % port
CHAT = os.environ['CHAT_OUT']
M = lambda n: metric(base, n)
procs = []

def start_svc(tag, *args):
    out = os.path.join(os.environ['T_TMP'], 'svc.%s.out' % tag)
    f = open(out, 'w')
    p = subprocess.Popen([os.environ['PY'], '-u', os.path.join(os.environ['TESTS_DIR'], 'svc.py'),
                          '--socket', os.environ['LINKD_SOCK']] + list(args), stdout=f, stderr=subprocess.DEVNULL)
    procs.append(p)
    ok = wait_until(lambda: any(l.startswith('READY') for l in open(out)), 10)
    return p, out, ok

def is_push(ev):
    return lambda m: isinstance(m, dict) and m.get('type') == ev

try:
    A, B = WS(url), WS(url)
    a, b = A.whoami(), B.whoami()
    A.call('do.join', {'room': 'r1'}); A.call('do.join', {'room': 'r2'}); B.call('do.join', {'room': 'r1'})
    c.eq('before the kill: memberships 3', M('linkd_memberships'), 3)

    def t_down():
        A.send('do.noreply', None, 'pending-1')
        wait_until(lambda: [i for i in svc_lines(CHAT, 'INBOUND') if i['id'] == 'pending-1'], 5)
        os.kill(int(os.environ['CHAT_PID']), signal.SIGKILL)
        t0 = time.monotonic()
        r = A.reply('pending-1', 5)
        dt = time.monotonic() - t0
        c.ok('a pending call gets SERVICE_UNAVAILABLE when the service dies', r is not None and r.get('error', {}).get('type') == 'SERVICE_UNAVAILABLE', r)
        c.ok('... at once (%.2f s)' % dt, dt < 2, dt)
        wait_until(lambda: M('linkd_services') == 0, 5)
        c.eq('linkd_services = 0 after kill -9', M('linkd_services'), 0)
        r = A.call('echo', 1)
        c.ok('service down: a message with id gets SERVICE_UNAVAILABLE', r is not None and r.get('error', {}).get('type') == 'SERVICE_UNAVAILABLE', r)
        c.ok('SERVICE_UNAVAILABLE has a message', r is not None and isinstance(r.get('error', {}).get('message'), str), r)
        c.ok('service down: the connection stays open', not A.closed and B.call('x') is not None, A.closed)
        c.eq('service down: connections kept', M('linkd_ws_connections'), 2)
        c.eq('service down: memberships kept', M('linkd_memberships'), 3)
        c.eq('service down: rooms kept', M('linkd_rooms'), 2)
    c.run('service down', t_down)

    def t_back():
        p, out, ok = start_svc('chat-2', '--name', 'chat', '--instance', 'chat-2', '--ws', '/ws/chat', '--route', 'GET /chat/info')
        c.ok('the service registers again on the same path', ok, open(out).read()[-300:])
        ea = svc_event(out, 'EXISTING', a)
        eb = svc_event(out, 'EXISTING', b)
        c.ok('EXISTING for the first connection, with its rooms', ea is not None and sorted(ea['rooms']) == ['r1', 'r2'], ea)
        c.ok('EXISTING for the second connection, with its rooms', eb is not None and eb['rooms'] == ['r1'], eb)
        c.ok('EXISTING carries path and remote address', ea is not None and ea['path'] == '/ws/chat' and ea['remote'].startswith('127.0.0.1:'), ea)
        c.eq('exactly one EXISTING per live connection', len([e for e in svc_lines(out, 'EVENT') if e['type'] == 'EXISTING']), 2)
        r = A.call('whoami')
        c.eq('messages now reach the new instance', r and r.get('data', {}).get('instance'), 'chat-2')
        A.call('do.emit', {'room': 'r1', 'event': 'back', 'data': 'x', 'except': [a]})
        c.eq('rooms survived the restart: room message reaches the other member', B.expect(is_push('back')), {'type': 'back', 'data': 'x'})
        r = B.call('do.rooms')
        c.eq('rooms query after the restart', r and r.get('data', {}).get('rooms'), ['r1'])
        C = WS(url)
        cid = C.whoami()
        c.ok('a new connection after the restart: CONNECTED to the new instance', svc_event(out, 'CONNECTED', cid) is not None, None)
        C.close()
        # kill -9 again while a room broadcast is being sent; then once more restart
        p.kill(); p.wait()
        wait_until(lambda: M('linkd_services') == 0, 5)
        r = A.call('echo', 2)
        c.ok('second kill: SERVICE_UNAVAILABLE again', r is not None and r.get('error', {}).get('type') == 'SERVICE_UNAVAILABLE', r)
        p3, out3, ok3 = start_svc('chat-3', '--name', 'chat', '--instance', 'chat-3', '--ws', '/ws/chat')
        ea = svc_event(out3, 'EXISTING', a)
        c.ok('second restart: EXISTING again with rooms intact', ea is not None and sorted(ea['rooms']) == ['r1', 'r2'], ea)
        r = A.call('echo', 3)
        c.eq('second restart: calls answered', r and r.get('data'), 3)
    c.run('service back', t_back)

    def t_graceful_disconnect_while_down():
        # DISCONNECTED of a client that leaves while the service is down is not needed; but
        # its memberships must be freed
        for p in procs:
            p.kill(); p.wait()
        wait_until(lambda: M('linkd_services') == 0, 5)
        B.abort()
        wait_until(lambda: M('linkd_memberships') == 2, 5)
        c.eq('client gone while the service is down: its membership freed', M('linkd_memberships'), 2)
        c.eq('... and its connection', M('linkd_ws_connections'), 1)
        p4, out4, ok4 = start_svc('chat-4', '--name', 'chat', '--instance', 'chat-4', '--ws', '/ws/chat')
        ev = [e for e in svc_lines(out4, 'EVENT') if e['type'] == 'EXISTING']
        wait_until(lambda: [e for e in svc_lines(out4, 'EVENT') if e['type'] == 'EXISTING'], 5)
        ev = [e for e in svc_lines(out4, 'EVENT') if e['type'] == 'EXISTING']
        c.ok('after that restart: EXISTING only for the live connection', [e['conn'] for e in ev] == [a], ev)
        A.close()
    c.run('client leaves while service down', t_graceful_disconnect_while_down)

    def t_two_instances():
        for p in procs:
            p.kill(); p.wait()
        wait_until(lambda: M('linkd_services') == 0, 5)
        s1 = start_svc('i1', '--name', 'multi', '--instance', 'm-1', '--ws', '/ws/multi')
        s2 = start_svc('i2', '--name', 'multi', '--instance', 'm-2', '--ws', '/ws/multi')
        c.ok('two instances register the same WebSocket path', s1[2] and s2[2], (open(s1[1]).read()[-200:], open(s2[1]).read()[-200:]))
        ws = [WS('ws://127.0.0.1:%s/ws/multi' % port) for _ in range(6)]
        sticky = True; seen = set()
        for w in ws:
            insts = set(w.call('whoami')['data']['instance'] for _ in range(4))
            seen |= insts
            sticky = sticky and len(insts) == 1
        c.ok('a connection stays with one instance', sticky, seen)
        conns = [w.whoami() for w in ws]
        ev1 = [e['conn'] for e in svc_lines(s1[1], 'EVENT') if e['type'] == 'CONNECTED']
        ev2 = [e['conn'] for e in svc_lines(s2[1], 'EVENT') if e['type'] == 'CONNECTED']
        c.ok('each connection announced (CONNECTED) to exactly one instance', sorted(ev1 + ev2) == sorted(conns), (ev1, ev2, conns))
        ws[0].call('do.all', {'event': 'fanout', 'data': 1})
        c.ok('broadcast-all from one instance reaches connections of both',
             all(w.expect(is_push('fanout'), 5) is not None for w in ws), None)
        for w in ws:
            w.close()
    c.run('two instances', t_two_instances)
finally:
    for p in procs:
        try:
            p.kill(); p.wait()
        except Exception:
            pass
EOF
rc=$?
[ $rc -eq 0 ] || fail "ws restart script" "python exited $rc"
check "linkd still running" linkd_alive
exit 0
