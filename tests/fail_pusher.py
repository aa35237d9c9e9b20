#!/usr/bin/python3
"""The pushing service of tests/t_fail_sigterm.sh, on svc.py's Svc (same
registration, echo/whoami replies, HTTP echo with sleep=MS).

Every connection is joined to room "all" when it opens. Once --clients
connections are open it pushes numbered messages to each of them in turn
({"type":"seq","data":{"n":K,"op":N}}, K counting per connection) and, every
--room-every pushes, one to the room ({"type":"rseq","data":{"r":R,"op":N}}),
each WebSocketOutbound with an op_id N, at most --window unacknowledged and
about --rate per second, until the link closes. It prints one line per fact,
with time.monotonic() stamps:
  PUSH {"op":N,"conn":C,"n":K,"t":T}          written to the link (room pushes: "room":"all","r":R)
  ACK {"op":N,"ok":b,"t":T,"error":..}         linkd's CommandResult
  REPLY {"conn":C,"corr":ID,"next_op":N,"t":T} a reply written; N is the op_id
                                                the next push will carry
plus svc.py's own lines (READY, EVENT, INBOUND, HTTP, ERROR, LINK_CLOSED).
"""
import json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svc  # noqa: E402
from svc import out, pb  # noqa: E402


class Pusher(svc.Svc):
    def __init__(self, a):
        super().__init__(a)
        self.conns = []        # in CONNECTED/EXISTING order
        self.nextn = {}        # conn -> next push number
        self.inflight = {}     # op -> (conn, n)
        self.turn = 0
        self.rn = 0
        self.started = False
        self.budget = 0.0
        self.last_tick = None

    def on_event(self, e):
        super().on_event(e)
        if e.event_type in (0, 2):   # CONNECTED, EXISTING
            self.conns.append(e.connection_id)
            self.nextn[e.connection_id] = 1
            m = pb.ServiceMessage()
            j = m.ws_room_operation
            j.connection_id = e.connection_id
            j.room = 'all'
            j.operation = pb.WebSocketRoomOperation.JOIN
            self.send_msg(m)
        elif e.event_type == 1:
            if e.connection_id in self.conns:
                self.conns.remove(e.connection_id)
        if not self.started and len(self.conns) >= self.a.clients:
            self.started = True
            self.last_tick = time.monotonic()
            self.later(10, self.tick)

    def ws_reply(self, conn, corr, data=None, error=None):
        super().ws_reply(conn, corr, data, error)
        if corr:
            out('REPLY', json.dumps({'conn': conn, 'corr': corr, 'next_op': self.next_op, 't': time.monotonic()}))

    def tick(self):
        now = time.monotonic()
        self.budget = min(self.budget + (now - self.last_tick) * self.a.rate, self.a.window)
        self.last_tick = now
        self.pump()
        self.later(10, self.tick)

    def pump(self):
        while self.conns and self.budget >= 1 and len(self.inflight) < self.a.window:
            self.budget -= 1
            op = self.next_op
            self.next_op += 1
            m = pb.ServiceMessage()
            o = m.ws_outbound
            o.op_id = op
            if self.a.room_every and op % self.a.room_every == 0:
                self.rn += 1
                o.room = 'all'
                o.event = 'rseq'
                o.payload = json.dumps({'r': self.rn, 'op': op}).encode()
                self.inflight[op] = ('all', self.rn)
                out('PUSH', json.dumps({'op': op, 'room': 'all', 'r': self.rn, 't': time.monotonic()}))
            else:
                conn = self.conns[self.turn % len(self.conns)]
                self.turn += 1
                n = self.nextn[conn]
                self.nextn[conn] = n + 1
                o.connection_id = conn
                o.event = 'seq'
                o.payload = json.dumps({'n': n, 'op': op}).encode()
                self.inflight[op] = (conn, n)
                out('PUSH', json.dumps({'op': op, 'conn': conn, 'n': n, 't': time.monotonic()}))
            self.send_msg(m)

    def on_result(self, r):
        if r.op_id not in self.inflight:
            return super().on_result(r)
        self.inflight.pop(r.op_id)
        err = None
        if r.HasField('error'):
            err = {'type': r.error.type, 'message': r.error.message, 'code': r.error.code}
        out('ACK', json.dumps({'op': r.op_id, 'ok': r.ok, 't': time.monotonic(), 'error': err}))


def main():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument('--socket', required=True)
    p.add_argument('--name', default='pusher')
    p.add_argument('--ws', default='/ws/push')
    p.add_argument('--route', action='append', default=[])
    p.add_argument('--clients', type=int, default=10, help='start pushing once this many connections are open')
    p.add_argument('--rate', type=float, default=400.0, help='pushes per second (all connections)')
    p.add_argument('--window', type=int, default=32, help='unacknowledged pushes at most')
    p.add_argument('--room-every', type=int, default=5, help='every Nth push goes to room "all" (0: none)')
    a = p.parse_args()
    # what svc.Svc reads
    for k, v in dict(instance='pusher-%d' % os.getpid(), version='1.0.0', namespace='', raw=False, max_msg=0,
                     ws_auth=False, compression=False, max_per_user=0, garbage='', oversize=0, first='',
                     send_heartbeat=False, reconnect=False).items():
        setattr(a, k, v)
    try:
        Pusher(a).run()
    except (BrokenPipeError, ConnectionResetError):
        out('LINK_CLOSED')


if __name__ == '__main__':
    main()
