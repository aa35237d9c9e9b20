#!/usr/bin/env bash
# WebSocket basics: handshake and its refusals (404/400/426/503), envelope
# routing, acks and errors by id, INVALID_MESSAGE, TIMEOUT, fragmentation,
# ping/pong, close codes 1007/1009, events, metrics.
. "$(dirname "$0")/lib.sh"

linkd_start --max-connections 4 --max-message-size 4k --handler-timeout 500ms || exit 0
svc_start chat --name chat --instance chat-1 --ws /ws/chat || fail "ws service registers" "$(cat "$SVC_OUT")"
svc_start small --name small --instance small-1 --ws /ws/small --max-msg 1024 || fail "ws service (1k messages) registers" "$(cat "$SVC_OUT")"

export LINKD_PORT LINKD_URL CHAT_OUT=${SVC_OUTS[chat]} SMALL_OUT=${SVC_OUTS[small]}
timeout 120 $PY - <<'EOF'
import os, sys, time, json
sys.path.insert(0, os.path.join(os.environ.get('TESTS_DIR', 'tests')))
from ws_client import *
c = Checks('t_ws_basic')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s' % port
CHAT = os.environ['CHAT_OUT']

# ---- handshake
def t_handshake():
    line, head = handshake('127.0.0.1', port, '/ws/chat', STD)
    c.ok('upgrade on the registered path: 101', line.startswith('HTTP/1.1 101'), line)
    c.ok('Sec-WebSocket-Accept is the RFC 6455 value',
         'sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=' in head.lower(), head)
c.run('handshake', t_handshake)

def t_refusals():
    line, _ = handshake('127.0.0.1', port, '/ws/nope', STD)
    c.ok('unknown WebSocket path: 404', line.startswith('HTTP/1.1 404'), line)
    line, _ = handshake('127.0.0.1', port, '/ws/chat', [h for h in STD if not h.startswith('Sec-WebSocket-Key')])
    c.ok('handshake without Sec-WebSocket-Key: 400', line.startswith('HTTP/1.1 400'), line)
    line, _ = handshake('127.0.0.1', port, '/ws/chat', STD[:2] + ['Sec-WebSocket-Key: short', STD[3]])
    c.ok('handshake with a bad Sec-WebSocket-Key: 400', line.startswith('HTTP/1.1 400'), line)
    line, head = handshake('127.0.0.1', port, '/ws/chat', STD[:3] + ['Sec-WebSocket-Version: 8'])
    c.ok('wrong version: 426', line.startswith('HTTP/1.1 426'), line)
    c.ok('426 names version 13', 'sec-websocket-version: 13' in head.lower(), head)
c.run('handshake refusals', t_refusals)

# ---- envelope routing, acks and errors by id
a = WS(url + '/ws/chat')
def t_routing():
    me = a.whoami()
    c.ok('whoami gives a slot.generation id', bool(me) and len(me.split('.')) == 2 and all(p.isdigit() for p in me.split('.')), me)
    ev = svc_event(CHAT, 'CONNECTED', me)
    c.ok('service got CONNECTED for the connection', ev is not None, svc_lines(CHAT, 'EVENT'))
    if ev:
        c.eq('CONNECTED carries the path', ev['path'], '/ws/chat')
        c.ok('CONNECTED carries the remote address', ev['remote'].startswith('127.0.0.1:'), ev['remote'])
    r = a.call('echo', {'a': [1, 2, {'b': 'ü€'}], 'n': None})
    c.eq('reply by id carries the data', r, {'id': r and r.get('id'), 'data': {'a': [1, 2, {'b': 'ü€'}], 'n': None}})
    r = a.call('echo')
    c.ok('reply to a message without data: "data":null', r is not None and 'data' in r and r['data'] is None, r)
    r = a.call('do.fail')
    c.ok('error reply by id', r is not None and r.get('error', {}).get('type') == 'FORBIDDEN'
         and r['error'].get('message') == 'not allowed' and r['error'].get('code') == 403 and 'data' not in r, r)
    a.send('echo', {'noid': 1})
    got = a.sync()
    c.eq('no id: no reply', got, [])
    ib = [i for i in svc_lines(CHAT, 'INBOUND') if i['data'] == {'noid': 1}]
    c.ok('message without id reached the service with an empty correlation id', len(ib) == 1 and ib[0]['id'] == '', ib)
    a.send('custom.type', {'k': 'v'}, 'cid-77')
    r = a.reply('cid-77')
    c.eq('a string id is echoed back as it is', r, {'id': 'cid-77', 'data': {'unknown': 'custom.type'}})
    ib = [i for i in svc_lines(CHAT, 'INBOUND') if i['id'] == 'cid-77']
    c.ok('inbound carries type, data and id', ib and ib[0]['type'] == 'custom.type' and ib[0]['data'] == {'k': 'v'}, ib)
    c.ok('inbound carries the connection id', ib and ib[0]['conn'] == me, ib)
c.run('routing', t_routing)

# ---- INVALID_MESSAGE: linkd answers, connection stays
def t_invalid():
    def inv(raw, want_id):
        a.send(raw=raw)
        m = a.expect(lambda m: isinstance(m, dict) and 'error' in m, 5)
        ok = m is not None and m['error'].get('type') == 'INVALID_MESSAGE' and isinstance(m['error'].get('message'), str)
        ok = ok and ((want_id is None and 'id' not in m) or m.get('id') == want_id)
        return ok, m
    ok, m = inv('this is not json', None)
    c.ok('not JSON: INVALID_MESSAGE without id', ok, m)
    ok, m = inv('{"data":1,"id":"q1"}', 'q1')
    c.ok('missing type: INVALID_MESSAGE with the id', ok, m)
    ok, m = inv('{"type":5,"id":"q2"}', 'q2')
    c.ok('type not a string: INVALID_MESSAGE with the id', ok, m)
    ok, m = inv('[1,2,3]', None)
    c.ok('JSON array: INVALID_MESSAGE', ok, m)
    ok, m = inv('{"type":"echo","id":"q3"', None)
    c.ok('truncated JSON: INVALID_MESSAGE', ok, m)
    r = a.call('echo', 5)
    c.eq('connection still works after INVALID_MESSAGE', r and r.get('data'), 5)
    c.ok('INVALID_MESSAGE never reached the service',
         not [i for i in svc_lines(CHAT, 'INBOUND') if i['id'] in ('q1', 'q2', 'q3')], svc_lines(CHAT, 'INBOUND')[-3:])
c.run('invalid messages', t_invalid)

# ---- fragmentation, ping/pong
def t_frag():
    env = json.dumps({'type': 'echo', 'data': {'text': 'frag-' + 'x' * 300}, 'id': 'f1'})
    a.send_fragmented(env, parts=4)
    r = a.reply('f1')
    c.eq('fragmented message (4 frames) reassembled', r and r.get('data'), {'text': 'frag-' + 'x' * 300})
    env = json.dumps({'type': 'echo', 'data': 'pinged', 'id': 'f2'}).encode()
    a.send_frame(env[:10], ABNF.OPCODE_TEXT, fin=0)
    a.ping(b'mid')
    a.send_frame(env[10:], ABNF.OPCODE_CONT, fin=1)
    p = a.expect(lambda m: m == ('pong', b'mid'), 5)
    c.ok('ping between fragments answered with pong', p is not None, a.inbox[-3:])
    r = a.reply('f2')
    c.eq('message with a ping between its fragments reassembled', r and r.get('data'), 'pinged')
    a.ping(b'hello-ping')
    p = a.expect(lambda m: m == ('pong', b'hello-ping'), 5)
    c.ok('ping answered with pong carrying the same payload', p is not None, a.pongs)
c.run('fragmentation and ping', t_frag)

# ---- TIMEOUT
def t_timeout():
    t0 = time.monotonic()
    r = a.call('do.noreply', None, timeout=5)
    dt = time.monotonic() - t0
    c.ok('no reply within --handler-timeout: TIMEOUT error by id', r is not None and r.get('error', {}).get('type') == 'TIMEOUT', r)
    c.ok('TIMEOUT comes after about 0.5 s (%.2f s)' % dt, 0.4 <= dt <= 2.0, dt)
    r = a.call('echo', 'after-timeout')
    c.eq('connection fine after TIMEOUT', r and r.get('data'), 'after-timeout')
c.run('timeout', t_timeout)

# ---- close codes
def t_close_codes():
    b = WS(url + '/ws/chat')
    b.send(raw=json.dumps({'type': 'echo', 'data': 'y' * 5000}))
    cl = b.wait_close(5)
    c.ok('message over --max-message-size (4k): close 1009', cl is not None and cl[0] == 1009, cl)
    b = WS(url + '/ws/small')
    r = b.call('echo', 'z' * 900)
    c.eq('message under the service max (1k) passes', r and r.get('data'), 'z' * 900)
    b.send(raw=json.dumps({'type': 'echo', 'data': 'z' * 2000}))
    cl = b.wait_close(5)
    c.ok("message over the service's max_message_size (1k): close 1009", cl is not None and cl[0] == 1009, cl)
    b = WS(url + '/ws/chat')
    b.send_frame('{"type":"echo","data":"'.encode() + b'\xff\xfe\xfd' + b'"}', ABNF.OPCODE_TEXT)
    cl = b.wait_close(5)
    c.ok('invalid UTF-8 in a text message: close 1007', cl is not None and cl[0] == 1007, cl)
    b = WS(url + '/ws/chat')
    good = '{"type":"echo","data":"€"}'.encode()
    cut = good.index(b'\xe2') + 1           # split inside the euro sign: valid overall
    b.send_frame(good[:cut], ABNF.OPCODE_TEXT, fin=0)
    b.send_frame(good[cut:], ABNF.OPCODE_CONT, fin=1)
    r = b.sync()
    c.ok('UTF-8 sequence split across fragments is accepted', not b.closed, b.closed)
    b.send_frame(b'{"type":"echo","data":"\xe2\x82', ABNF.OPCODE_TEXT, fin=0)
    b.send_frame(b'x"}', ABNF.OPCODE_CONT, fin=1)
    cl = b.wait_close(5)
    c.ok('invalid UTF-8 across fragments: close 1007', cl is not None and cl[0] == 1007, cl)
    b = WS(url + '/ws/chat')
    bid = b.whoami()
    b.close(4321, b'bye now')
    ev = svc_event(CHAT, 'DISCONNECTED', bid)
    c.ok('client close: service gets DISCONNECTED', ev is not None, svc_lines(CHAT, 'EVENT')[-2:])
    c.ok('DISCONNECTED carries the close code 4321', ev is not None and ev.get('close_code') == 4321, ev)
c.run('close codes', t_close_codes)

def t_close_echo():
    b = WS(url + '/ws/chat')
    b.whoami()
    b.ws.send_close(4000, b'x')
    cl = b.wait_close(5)
    c.ok('client close frame answered with a close frame (code echoed)', cl is not None and cl[0] == 4000, cl)
c.run('close echo', t_close_echo)

# ---- metrics
def t_metrics():
    for n in ('linkd_ws_messages_in_total', 'linkd_ws_messages_out_total', 'linkd_ws_bytes_in_total', 'linkd_ws_bytes_out_total'):
        v = metric(base, n)
        c.ok('metric %s counts (%s)' % (n, v), v is not None and v > 0, v)
    v = wait_until(lambda: metric(base, 'linkd_ws_connections') == 1, 5)
    c.eq('linkd_ws_connections counts the one open connection', metric(base, 'linkd_ws_connections'), 1)
    c.ok('linkd_ws_drops_total present', metric(base, 'linkd_ws_drops_total') is not None, None)
    i0 = metric(base, 'linkd_ws_messages_in_total'); o0 = metric(base, 'linkd_ws_messages_out_total')
    for k in range(5):
        a.call('echo', k)
    i1 = metric(base, 'linkd_ws_messages_in_total'); o1 = metric(base, 'linkd_ws_messages_out_total')
    c.eq('messages in grows by 5 after 5 calls', (i1 or 0) - (i0 or 0), 5)
    c.eq('messages out grows by 5 after 5 replies', (o1 or 0) - (o0 or 0), 5)
c.run('metrics', t_metrics)

# ---- full table: --max-connections 4
def t_full():
    ok = wait_until(lambda: metric(base, 'linkd_ws_connections') == 1, 5)
    others = [WS(url + '/ws/chat') for _ in range(3)]
    c.eq('four connections open', metric(base, 'linkd_ws_connections'), 4)
    line, _ = handshake('127.0.0.1', port, '/ws/chat', STD)
    c.ok('connection table full: upgrade answered 503', line.startswith('HTTP/1.1 503'), line)
    r = a.call('echo', 'still')
    c.eq('existing connections unaffected by the refused upgrade', r and r.get('data'), 'still')
    old = others[0].whoami()
    others[0].close()
    wait_until(lambda: metric(base, 'linkd_ws_connections') == 3, 5)
    n = WS(url + '/ws/chat')
    new = n.whoami()
    c.ok('a freed slot is usable again', new is not None, new)
    c.ok('the new connection has a new id (generation)', new != old, (old, new))
    r = n.call('do.send', {'to': old, 'event': 'stale', 'data': 1})
    c.ok('push to a stale id fails (CommandResult not ok)', r is not None and r.get('data', {}).get('ok') is False, r)
    got = n.sync()
    c.ok('a stale id never reaches the new connection', not [m for m in got if isinstance(m, dict) and m.get('type') == 'stale'], got)
    for o in others[1:] + [n]:
        o.close()
c.run('full table', t_full)
a.close()
EOF
rc=$?
[ $rc -eq 0 ] || fail "ws basic script" "python exited $rc"
check "linkd still running" linkd_alive
exit 0
