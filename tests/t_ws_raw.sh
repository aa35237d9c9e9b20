#!/usr/bin/env bash
# Raw WebSocket paths (SPEC §3): frames forwarded as they are, text and binary,
# no envelope either way.
. "$(dirname "$0")/lib.sh"

linkd_start --max-message-size 64k || exit 0
svc_start raw --name rawdev --instance raw-1 --ws /raw --raw || fail "raw service registers" "$(cat "$SVC_OUT")"

export LINKD_PORT LINKD_URL RAW_OUT=${SVC_OUTS[raw]}
timeout 60 $PY - <<'EOF'
import os, sys, json
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_raw')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/raw' % port
RAW = os.environ['RAW_OUT']

def frame(w, timeout=5):
    """next data frame as (opcode, bytes)"""
    n = len(w.frames)
    m = w.expect(lambda m: True, timeout)
    return w.frames[n] if len(w.frames) > n else None

def t():
    A, B = WS(url), WS(url)
    c.ok('CONNECTED events on a raw path', wait_until(lambda: len([e for e in svc_lines(RAW, 'EVENT') if e['type'] == 'CONNECTED']) == 2, 5), svc_lines(RAW, 'EVENT'))
    A.send(raw='hello raw, not JSON')
    f = frame(A)
    c.eq('raw text frame echoed as it is (text opcode)', f, (ABNF.OPCODE_TEXT, b'hello raw, not JSON'))
    ib = svc_lines(RAW, 'INBOUND')
    c.ok('service got the text frame as it is, binary=false',
         ib and ib[-1]['data'] == 'hello raw, not JSON' and ib[-1]['binary'] is False, ib[-1:])
    blob = bytes(range(256)) * 4
    A.send_binary(blob)
    f = frame(A)
    c.eq('raw binary frame echoed as it is (binary opcode, 1 KiB)', f, (ABNF.OPCODE_BINARY, blob))
    ib = svc_lines(RAW, 'INBOUND')
    c.ok('service got the binary frame, binary=true', ib and ib[-1]['binary'] is True and ib[-1]['len'] == 1024, ib[-1:])
    env = '{"type":"echo","data":1,"id":"x"}'
    A.send(raw=env)
    f = frame(A)
    c.eq('an envelope-looking text is not interpreted on a raw path', f, (ABNF.OPCODE_TEXT, env.encode()))
    A.send(raw='{broken')
    f = frame(A)
    c.eq('invalid JSON on a raw path: no INVALID_MESSAGE, forwarded', f, (ABNF.OPCODE_TEXT, b'{broken'))
    A.send_fragmented(b'\x00\x01' * 3000, parts=5, opcode=ABNF.OPCODE_BINARY)
    f = frame(A)
    c.eq('fragmented binary message forwarded whole', f, (ABNF.OPCODE_BINARY, b'\x00\x01' * 3000))
    A.send(raw='all:to everyone')
    fa, fb = frame(A), frame(B)
    c.eq('raw broadcast from the service reaches A as it is', fa, (ABNF.OPCODE_TEXT, b'to everyone'))
    c.eq('raw broadcast from the service reaches B as it is', fb, (ABNF.OPCODE_TEXT, b'to everyone'))
    A.send(raw='')
    f = frame(A)
    c.eq('empty text frame forwarded', f, (ABNF.OPCODE_TEXT, b''))
    A.ping(b'raw-ping')
    c.ok('ping/pong on a raw path', A.expect(lambda m: m == ('pong', b'raw-ping'), 5) is not None, A.pongs)
    A.send_frame(b'bad \xc3\x28 utf8', ABNF.OPCODE_TEXT)
    cl = A.wait_close(5)
    c.ok('invalid UTF-8 text on a raw path: close 1007', cl is not None and cl[0] == 1007, cl)
    c.ok('B unaffected', frame(B, 0.3) is None and not B.closed, B.closed)
    B.send(raw='still here')
    c.eq('B still echoes', frame(B), (ABNF.OPCODE_TEXT, b'still here'))
    B.close()
c.run('raw', t)
EOF
rc=$?
[ $rc -eq 0 ] || fail "ws raw script" "python exited $rc"
check "linkd still running" linkd_alive
exit 0
