#!/usr/bin/python3
"""Connection recovery through the C library (tests/t_sdk_c.sh runs it):
    recovery.py BASE_URL SVC_OUT
against svc_c registered with --recovery on /ws/rec. Prints key=value words."""
import json, os, sys
sys.path.insert(0, os.environ['TESTS_DIR'])
from ws_client import WS, wait_until  # noqa: E402

url, out = sys.argv[1].replace('http://', 'ws://') + '/ws/rec', sys.argv[2]
slow = float(os.environ.get('T_SLOW', '1'))


def lines(kind):
    return [json.loads(l.split(' ', 1)[1]) for l in open(out) if l.startswith(kind + ' ')]


a, b = WS(url), WS(url)
tok = a.expect(lambda m: m.get('type') == 'linkd.session', 5 * slow)['data']['token']
ca = a.whoami()
a.call('join', {'room': 'r1'})
b.call('join', {'room': 'r1'})
b.call('say', {'room': 'r1', 'text': 'seen'})
seq = a.expect(lambda m: m.get('type') == 'said', 5 * slow)['seq']
a.abort()
print('dropped=%s' % bool(wait_until(lambda: [e for e in lines('DISCONNECT') if e['id'] == ca], 10 * slow)))
b.call('say', {'room': 'r1', 'text': 'missed'})
a2 = WS(url)
a2.send('linkd.resume', {'token': tok, 'rooms': {'r1': seq}})
missed = a2.expect(lambda m: m.get('type') == 'said', 5 * slow)
rec = a2.expect(lambda m: m.get('type') == 'linkd.recovered', 5 * slow)
print('missed=%s recovered=%s' % (missed and missed['data']['text'], rec and rec['data'].get('recovered')))
ev = wait_until(lambda: lines('RESUMED'), 5 * slow)
prev = [l.split()[1] for l in open(out) if l.startswith('RESUMED_FROM ')]
print('resumed_rooms=%s previous_is_dropped=%s' % (ev and ','.join(ev[0]['rooms']), prev[:1] == [ca]))
