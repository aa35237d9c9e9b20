#!/usr/bin/env bash
# WebSocket limits and lifecycle (SPEC §3, §6, §7): heartbeat pings and the
# close after missed pongs, per-connection rate limit (RATE_LIMITED), slow
# consumer over --max-outbound (close 1008, or drop), per-IP cap, shutdown
# (server.shutdown then close 1001, in-flight HTTP finished, exit 0).
. "$(dirname "$0")/lib.sh"

linkd_start --heartbeat-interval 300ms --max-connections-per-ip 3 || exit 0
svc_start chat --name chat --instance chat-1 --ws /ws/chat || fail "chat service registers" "$(cat "$SVC_OUT")"

export LINKD_PORT LINKD_URL
timeout 90 $PY - <<'EOF'
import os, sys, time, json, socket, base64
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_limits')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/ws/chat' % port
M = lambda n: metric(base, n)

def t_heartbeat():
    A = WS(url)
    pings = 0
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        m = A.expect(lambda m: isinstance(m, tuple) and m[0] == 'ping', end - time.monotonic())
        if m:
            pings += 1
    c.ok('heartbeat: linkd pings every 300 ms (%d pings in 2 s)' % pings, 3 <= pings <= 10, pings)
    c.ok('heartbeat: a client that answers pings stays open', not A.closed and A.call('echo', 1) is not None, A.closed)
    # a client that never answers: raw socket, handshake by hand, then read without ponging
    s = socket.create_connection(('127.0.0.1', int(port)), timeout=5)
    s.sendall(('GET /ws/chat HTTP/1.1\r\nHost: x\r\n' + '\r\n'.join(STD) + '\r\n\r\n').encode())
    t0 = time.monotonic()
    buf = b''; closed_at = None
    s.settimeout(0.2)
    while time.monotonic() - t0 < 4:
        try:
            d = s.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            d = b''
        if not d:
            closed_at = time.monotonic() - t0
            break
        buf += d
    s.close()
    c.ok('heartbeat: a client that never pongs is closed after missed pongs (%s s)' % (closed_at and round(closed_at, 2)),
         closed_at is not None and 0.5 <= closed_at <= 2.5, closed_at)
    A.close()
c.run('heartbeat', t_heartbeat)

def t_ip_cap():
    ws = [WS(url) for _ in range(3)]
    line, _ = handshake('127.0.0.1', port, '/ws/chat', STD)
    c.ok('per-IP cap (3): the 4th upgrade from one address is refused (%s)' % line,
         not line.startswith('HTTP/1.1 101') and line[9:10] in ('4', '5'), line)
    ws[0].close()
    wait_until(lambda: M('linkd_ws_connections') == 2, 5)
    n = WS(url)
    c.ok('per-IP cap: a slot frees when one closes', n.whoami() is not None, None)
    for w in ws[1:] + [n]:
        w.close()
    wait_until(lambda: M('linkd_ws_connections') == 0, 5)
c.run('per-IP cap', t_ip_cap)

EOF
rc=$?
[ $rc -eq 0 ] || fail "ws limits script" "python exited $rc"
check "linkd still running" linkd_alive
linkd_stop

# Rate limit and slow consumer (policy close), default heartbeat
LINKD_PORT= LINKD_SOCK=$T_TMP/rate.sock
if linkd_start --rate-limit 5 --rate-burst 5 --max-outbound 64k; then
  svc_start rate --name chat --instance chat-r --ws /ws/chat || fail "chat service registers (rate)" "$(cat "$SVC_OUT")"
  export LINKD_PORT LINKD_URL
  timeout 60 $PY - <<'EOF'
import os, sys, time
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_limits')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
url = 'ws://127.0.0.1:%s/ws/chat' % port
M = lambda n: metric(base, n)

def t_rate():
    A = WS(url)
    A.whoami()
    A.expect(lambda m: False, 1.2)   # let the bucket refill (5/s, burst 5): time is the behaviour under test
    for i in range(20):
        A.send('echo', i, 'r%d' % i)
    got = {}
    end = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < end:
        m = A.expect(lambda m: isinstance(m, dict) and str(m.get('id', '')).startswith('r'), end - time.monotonic())
        if m:
            got[m['id']] = m
    limited = [k for k, m in got.items() if m.get('error', {}).get('type') == 'RATE_LIMITED']
    ok = [k for k, m in got.items() if 'data' in m]
    c.eq('rate limit: every message with an id gets an answer', len(got), 20)
    c.ok('rate limit: burst of 5 then RATE_LIMITED by id (%d ok, %d limited)' % (len(ok), len(limited)),
         5 <= len(ok) <= 7 and len(limited) == 20 - len(ok), sorted(ok))
    c.ok('rate limit: the connection stays open', not A.closed, A.closed)
    A.expect(lambda m: False, 1.2)
    r = A.call('echo', 'after')
    c.eq('rate limit: tokens come back with time', r and r.get('data'), 'after')
    A.close()
c.run('rate limit', t_rate)

def t_slow_close():
    S = WS(url, rcvbuf=4096)
    S.whoami()
    before = M('linkd_ws_connections')
    d0 = M('linkd_ws_drops_total') or 0
    S.send('do.flood', {'n': 3000, 'size': 1000})
    # not reading: the queue passes --max-outbound; linkd counts it and applies the policy
    over = wait_until(lambda: (M('linkd_ws_drops_total') or 0) > d0, 10)
    c.ok('slow consumer over --max-outbound 64k: linkd notices (linkd_ws_drops_total grows)', over, M('linkd_ws_drops_total'))
    cl = S.wait_close(10)   # now drain: what was queued, then the close frame
    n = len([m for m in S.inbox if isinstance(m, dict) and m.get('type') == 'flood'])
    c.ok('slow consumer (policy close): close 1008 after the queued data (got %s after %d pushes)' % (cl and cl[0], n),
         cl is not None and cl[0] == 1008, cl)
    c.ok('slow consumer: it did not get all 3000 pushes', n < 3000, n)
    gone = wait_until(lambda: M('linkd_ws_connections') == before - 1, 5)
    c.ok('slow consumer: the connection is gone', gone, M('linkd_ws_connections'))
c.run('slow consumer close', t_slow_close)
EOF
  [ $? -eq 0 ] || fail "ws rate/slow-consumer script" "python exited"
  check "linkd still running (rate)" linkd_alive
  linkd_stop
fi

# Outbound policy drop: messages over the cap are dropped and counted, the connection stays
LINKD_PORT= LINKD_SOCK=$T_TMP/drop.sock
if linkd_start --max-outbound 64k --outbound-policy drop; then
  svc_start drop --name chat --instance chat-d --ws /ws/chat || fail "chat service registers (drop)" "$(cat "$SVC_OUT")"
  export LINKD_PORT LINKD_URL
  timeout 60 $PY - <<'EOF'
import os, sys, time
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_limits')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
def t():
    S = WS('ws://127.0.0.1:%s/ws/chat' % port, rcvbuf=4096)
    S.whoami()
    d0 = metric(base, 'linkd_ws_drops_total') or 0
    S.send('do.flood', {'n': 3000, 'size': 1000})
    ok = wait_until(lambda: (metric(base, 'linkd_ws_drops_total') or 0) > d0, 10)
    c.ok('policy drop: pushes over --max-outbound are dropped and counted (linkd_ws_drops_total)', ok, metric(base, 'linkd_ws_drops_total'))
    n = 0
    while S.expect(lambda m: isinstance(m, dict) and m.get('type') == 'flood', 2):
        n += 1
    c.ok('policy drop: the client got some but not all pushes (%d)' % n, 0 < n < 3000, n)
    c.ok('policy drop: the connection stays open', not S.closed, S.closed)
    r = S.call('echo', 'alive')
    c.eq('policy drop: the connection works after draining', r and r.get('data'), 'alive')
    S.close()
c.run('drop policy', t)
EOF
  [ $? -eq 0 ] || fail "ws drop-policy script" "python exited"
  linkd_stop
fi

# Shutdown: server.shutdown then close 1001, in-flight HTTP finished, services told, exit 0
LINKD_PORT= LINKD_SOCK=$T_TMP/shut.sock
if linkd_start --shutdown-timeout 5s; then
  svc_start shut --name chat --instance chat-s --ws /ws/chat --route 'GET /slow' || fail "service registers (shutdown)" "$(cat "$SVC_OUT")"
  export LINKD_PORT LINKD_URL LINKD_PID
  timeout 60 $PY - <<'EOF'
import os, sys, time, signal, subprocess
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import *
c = Checks('t_ws_limits')
port = os.environ['LINKD_PORT']; base = os.environ['LINKD_URL']
def t():
    A = WS('ws://127.0.0.1:%s/ws/chat' % port)
    A.whoami()
    curl = subprocess.Popen(['curl', '-s', '-m', '10', '-o', '/dev/null', '-w', '%{http_code}', base + '/slow?sleep=700'],
                            stdout=subprocess.PIPE, text=True)
    # the request must be in flight (owed by the service) when SIGTERM lands
    c.ok('shutdown: the slow request is in flight', wait_until(lambda: (metric(base, 'linkd_pending_replies') or 0) >= 1, 5), metric(base, 'linkd_pending_replies'))
    os.kill(int(os.environ['LINKD_PID']), signal.SIGTERM)
    m = A.expect(lambda m: isinstance(m, dict) and m.get('type') == 'server.shutdown', 5)
    c.ok('shutdown: clients get {"type":"server.shutdown"}', m is not None, A.inbox)
    cl = A.wait_close(5)
    c.ok('shutdown: then close 1001', cl is not None and cl[0] == 1001, cl)
    code = curl.communicate(timeout=10)[0]
    c.eq('shutdown: an in-flight HTTP request is finished (200)', code, '200')
c.run('shutdown', t)
EOF
  [ $? -eq 0 ] || fail "ws shutdown script" "python exited"
  wait_exit "$LINKD_PID" 10
  expect_eq "shutdown: linkd exits 0" "$WAIT_RC" 0
  wait_for 5 svc_grep shut '^LINK_CLOSED'
  check "shutdown: the service link is closed" svc_grep shut '^LINK_CLOSED'
fi
exit 0
