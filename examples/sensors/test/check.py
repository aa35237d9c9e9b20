#!/usr/bin/python3
"""The sensors service as dashboards see it, through a real linkd (tests/t_sensors.sh runs it).

    check.py BASE_URL SECRET

Prints PASS:/FAIL: lines (prefix t_sensors:).
"""
import base64, hashlib, hmac, json, os, sys, time, urllib.request

sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS, Checks, wait_until  # noqa: E402

base, secret = sys.argv[1], sys.argv[2]
ws_url = base.replace('http://', 'ws://') + '/ws/sensors'
C = Checks('t_sensors')
SLOW = float(os.environ.get('T_SLOW', '1'))


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b'=').decode()


def token(sub, roles):
    h = b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())
    p = b64(json.dumps({'sub': sub, 'preferred_username': sub, 'roles': roles, 'exp': int(time.time()) + 3600}).encode())
    return h + '.' + p + '.' + b64(hmac.new(secret.encode(), (h + '.' + p).encode(), hashlib.sha256).digest())


def get(path):
    with urllib.request.urlopen(base + path, timeout=10 * SLOW) as r:
        return r.status, r.headers.get('content-type', ''), r.read()


def meminfo_total():
    for line in open('/proc/meminfo'):
        if line.startswith('MemTotal:'):
            return int(line.split()[1])


def sample_ok(s):
    return (isinstance(s, dict) and isinstance(s.get('t'), int) and len(s.get('load', [])) == 3
            and s['mem']['total_kb'] == meminfo_total() and 0 <= s['mem']['used_pct'] <= 100
            and s['net']['rx_bytes'] >= 0 and ('temp_c' in s) and (s['cpu_pct'] is None or 0 <= s['cpu_pct'] <= 100))


def samples(w, n, timeout):
    out = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        m = w.expect(lambda m: m.get('type') == 'sensors.sample', end - time.monotonic())
        if m is None:
            break
        out.append(m['data'])
    return out


def main():
    st, ct, body = get('/sensors/')
    C.ok('GET /sensors/: the dashboard page, from the service itself', st == 200 and ct.startswith('text/html') and b'<canvas' in body,
         '%s %s' % (st, ct))
    st, ct, body = get('/sensors/app.js')
    C.ok('GET /sensors/app.js: its script', st == 200 and 'javascript' in ct and b'sensors.set_rate' in body, '%s %s' % (st, ct))
    st, _, body = get('/api/sensors/config')
    cfg = json.loads(body)
    C.ok('GET /api/sensors/config', st == 200 and cfg['interval_ms'] == 1000 and cfg['history_slots'] == 3600 and cfg['cpus'] >= 1, cfg)

    a = WS(ws_url + '?token=' + token('ada', ['admin']))
    v = WS(ws_url + '?token=' + token('vic', ['viewer']))
    anon = WS(ws_url)
    c = anon.expect(lambda m: m.get('type') == 'sensors.config', 5 * SLOW)
    C.ok('a dashboard gets the config when it connects', c and c['data']['interval_ms'] == 1000, c)
    got = samples(anon, 2, 6 * SLOW)
    C.ok('samples pushed to the room once a second: real readings (memory total = /proc/meminfo)',
         len(got) == 2 and all(sample_ok(s) for s in got) and 500 <= got[1]['t'] - got[0]['t'] <= 1600 * SLOW,
         got)
    load = float(open('/proc/loadavg').read().split()[0])
    C.ok('load average as /proc/loadavg has it', got and abs(got[-1]['load'][0] - load) < 1.5, (got[-1:], load))
    temp_expected = os.path.isdir('/sys/class/thermal') and any(
        n.startswith('thermal_zone') for n in os.listdir('/sys/class/thermal'))
    C.ok('CPU temperature: null when the machine has no thermal zone, a number when it has',
         got and ((got[-1]['temp_c'] is None) != temp_expected), (got[-1:], temp_expected))
    r = a.call('sensors.get')
    C.ok('sensors.get: config and latest sample', r and sample_ok(r['data']['latest']) and r['data']['config']['room'] == 'sensors', r)

    for who, w in (('anonymous', anon), ('role viewer', v)):
        r = w.call('sensors.set_rate', {'interval_ms': 200})
        C.ok('set_rate by %s: FORBIDDEN' % who, r and r.get('error', {}).get('type') == 'FORBIDDEN' and r['error']['code'] == 403, r)
    r = a.call('sensors.set_rate', {'interval_ms': 50})
    C.ok('set_rate out of range: VALIDATION_ERROR', r and r.get('error', {}).get('type') == 'VALIDATION_ERROR', r)
    r = a.call('sensors.set_rate', {'interval_ms': 200})
    C.ok('set_rate by role admin: accepted', r and r.get('data', {}).get('interval_ms') == 200 and r['data']['by'] == 'ada', r)
    c = v.expect(lambda m: m.get('type') == 'sensors.config' and m['data']['interval_ms'] == 200, 5 * SLOW)
    C.ok('the new rate is pushed to every dashboard', c and c['data']['by'] == 'ada', c)
    v.sync()
    v.inbox = [m for m in v.inbox if not (isinstance(m, dict) and m.get('type') == 'sensors.sample')]
    fast = samples(v, 6, 5 * SLOW)
    gaps = [b['t'] - a_['t'] for a_, b in zip(fast, fast[1:])]
    C.ok('then samples come every 200 ms', len(fast) == 6 and all(100 <= g <= 450 * SLOW for g in gaps), gaps)
    h = json.loads(get('/api/sensors/history')[2])
    ts = [s['t'] for s in h['samples']]
    C.ok('history: the samples so far, oldest first, one per second at most (1 s slots)',
         h['count'] == len(ts) >= 3 and ts == sorted(ts) and len({t // 1000 for t in ts}) == len(ts)
         and h['now'] - ts[-1] < 2000 * SLOW and all(sample_ok(s) for s in h['samples']),
         {k: h[k] for k in ('count', 'now')})
    h2 = json.loads(get('/api/sensors/history?since=%d' % ts[-2])[2])
    h3 = json.loads(get('/api/sensors/history?limit=2')[2])
    C.ok('history ?since= and ?limit=', h2['samples'][0]['t'] > ts[-2] and len(h3['samples']) == 2 and h3['samples'][-1]['t'] >= ts[-1],
         (h2['count'], h3['count']))
    r = a.call('sensors.set_rate', {'interval_ms': 1000})
    C.ok('rate set back to 1 s', r and r.get('data', {}).get('interval_ms') == 1000, r)
    for w in (a, v, anon):
        w.close()


try:
    main()
except Exception as e:
    C.ok('check.py runs', False, '%s: %s' % (type(e).__name__, e))
