#!/usr/bin/env bash
# permessage-deflate (RFC 7692): offered to clients when the service asks for
# compression; negotiated with no context takeover both ways; compressed and
# plain clients share one room; inflated size and UTF-8 are still checked.
. "$(dirname "$0")/lib.sh"

linkd_start --max-message-size 20000 || exit 0
svc_start z --name zsvc --instance z-1 --ws /ws/z --compression || fail "compressing service registers" "$(cat "$SVC_OUT")"
svc_start p --name psvc --instance p-1 --ws /ws/plain || fail "plain service registers" "$(cat "$SVC_OUT")"

$PY - "$LINKD_PORT" <<'EOF'
import asyncio, json, sys, zlib, socket, base64, os
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import Checks
import websockets
port = int(sys.argv[1])
c = Checks('t_ws_deflate')

async def main():
    z = await websockets.connect('ws://127.0.0.1:%d/ws/z' % port, compression='deflate', max_size=None)
    ext = z.response_headers.get('Sec-WebSocket-Extensions', '')
    c.ok('compressing service: permessage-deflate negotiated (%s)' % ext,
         'permessage-deflate' in ext and 'server_no_context_takeover' in ext and 'client_no_context_takeover' in ext, ext)
    big = {'text': 'linkd ' * 1500}
    await z.send(json.dumps({'type': 'echo', 'data': big, 'id': 'e1'}))
    r = json.loads(await asyncio.wait_for(z.recv(), 5))
    c.ok('compressed message in, compressed reply out, intact', r.get('id') == 'e1' and r.get('data') == big, str(r)[:80])
    await z.send(json.dumps({'type': 'echo', 'data': 'short', 'id': 'e2'}))
    r = json.loads(await asyncio.wait_for(z.recv(), 5))
    c.ok('small messages work too', r == {'id': 'e2', 'data': 'short'}, r)

    p = await websockets.connect('ws://127.0.0.1:%d/ws/z' % port, compression=None)
    c.ok('a client without the extension gets none', 'Sec-WebSocket-Extensions' not in p.response_headers, dict(p.response_headers))
    for w, n in ((z, 'jz'), (p, 'jp')):
        await w.send(json.dumps({'type': 'do.join', 'data': {'room': 'mix'}, 'id': n}))
        json.loads(await asyncio.wait_for(w.recv(), 5))
    await p.send(json.dumps({'type': 'do.emit', 'data': {'room': 'mix', 'event': 'news', 'data': big}}))
    got = []
    for w in (z, p):
        m = json.loads(await asyncio.wait_for(w.recv(), 5))
        got.append(m.get('type') == 'news' and m.get('data') == big)
    c.ok('one room push reaches a compressed and a plain member intact', all(got), got)

    q = await websockets.connect('ws://127.0.0.1:%d/ws/plain' % port, compression='deflate')
    c.ok('service without compression: no extension offered back', 'Sec-WebSocket-Extensions' not in q.response_headers, dict(q.response_headers))
    await q.close()

    # 100k of zeros compresses to ~100 bytes: the inflated size is what counts (limit 20000)
    bomb = json.dumps({'type': 'echo', 'data': '0' * 100000})
    await z.send(bomb)
    try:
        await asyncio.wait_for(z.recv(), 5)
        code = None
    except websockets.ConnectionClosed as e:
        code = e.code
    c.eq('compressed message over --max-message-size once inflated: close 1009', code, 1009)
    await p.close()

try:
    asyncio.run(main())
except Exception as e:
    c.ok("websockets session", False, "%s: %s" % (type(e).__name__, e))

# A compressed text frame whose content is not UTF-8: raw socket, hand-made frame.
s = socket.create_connection(('127.0.0.1', port), timeout=5)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(('GET /ws/z HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
           'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n' % key).encode())
head = b''
while b'\r\n\r\n' not in head:
    head += s.recv(4096)
def zframe(raw):
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = (co.compress(raw) + co.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0xC1, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
# a compressible echo: the reply must come back as a compressed frame (RSV1)
s.sendall(zframe(json.dumps({'type': 'echo', 'data': 'x' * 3000, 'id': 'z'}).encode()))
data = head.split(b'\r\n\r\n', 1)[1]
while len(data) < 4:
    data += s.recv(65536)
n = data[1] & 0x7f
hl = 4 if n == 126 else 10 if n == 127 else 2
ln = int.from_bytes(data[2:hl], 'big') if hl > 2 else n
while len(data) < hl + ln:
    data += s.recv(65536)
body = data[hl:hl + ln]
c.ok('the reply to a compressible message is a compressed frame (RSV1, %d bytes for 3000+)' % ln, data[0] == 0xC1 and ln < 200, hex(data[0]))
c.eq('... and inflates to the reply', json.loads(zlib.decompressobj(-15).decompress(body + b'\x00\x00\xff\xff')), {'id': 'z', 'data': 'x' * 3000})
data = data[hl + ln:]
s.sendall(zframe(b'\xff\xfe not utf-8'))
while len(data) < 4:
    more = s.recv(4096)
    if not more:
        break
    data += more
code = int.from_bytes(data[2:4], 'big') if len(data) >= 4 and data[0] & 0x0f == 8 else None
c.eq('compressed text that is not UTF-8: close 1007', code, 1007)
sys.exit(0)
EOF
check "linkd still running" linkd_alive
expect_eq "no connection left" "$(metric linkd_ws_connections)" 0
