// The client's side of the protocol against a scripted WebSocket (no linkd):
// URLs and tokens, reply matching, the offline queue, backoff, and the
// recovery exchange exactly as the protocol has it (linkd.session, resume as
// the first message, replay with overlap dropped, linkd.recovered, epochs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { connect, LinkdError } from "linkd-client";
import { delay, nextEvent, waitFor } from "./helpers.mjs";

/** A scripted WebSocket: the test opens it, feeds it frames, drops it. */
function fakeServer() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.listeners = {};
      this.closedWith = null;
      sockets.push(this);
    }
    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }
    fire(type, ev = {}) {
      for (const fn of this.listeners[type] ?? []) fn(ev);
    }
    send(frame) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(frame));
    }
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.closedWith = { code, reason };
      this.readyState = 3;
      queueMicrotask(() => this.fire("close", { code, reason }));
    }
    // --- the test's side
    open() {
      this.readyState = 1;
      this.fire("open");
    }
    deliver(obj) {
      this.fire("message", { data: JSON.stringify(obj) });
    }
    drop(code = 1006) {
      this.readyState = 3;
      this.fire("close", { code, reason: "" });
    }
    refuse() {
      this.readyState = 3;
      this.fire("error");
      this.fire("close", { code: 1006, reason: "" });
    }
  }
  return {
    WebSocket: FakeWebSocket,
    sockets,
    /** The n-th socket the client made (waits for it). */
    nth: (n, ms = 3000) => waitFor(() => sockets[n], ms, `connection attempt #${n + 1}`),
  };
}

const fast = { initialDelayMs: 10, maxDelayMs: 40 };

test("protocol: http:// becomes ws://, the token goes in ?token= (the URL's own query kept), a token function is called per attempt", async () => {
  const srv = fakeServer();
  let calls = 0;
  const c = connect("http://h.example:3000/ws/x?v=1", { WebSocket: srv.WebSocket, reconnect: fast, token: async () => `t${++calls}` });
  const a = await srv.nth(0);
  assert.equal(a.url, "ws://h.example:3000/ws/x?v=1&token=t1");
  a.open();
  a.drop();
  const b = await srv.nth(1);
  assert.equal(b.url, "ws://h.example:3000/ws/x?v=1&token=t2");
  c.close();
  const d = connect("https://h.example/ws/y", { WebSocket: srv.WebSocket, token: "abc" });
  assert.equal((await srv.nth(2)).url, "wss://h.example/ws/y?token=abc");
  d.close();
  assert.throws(() => connect("ftp://h.example/", { WebSocket: srv.WebSocket }), TypeError);
});

test("protocol: replies are matched by id (out of order), data null when absent, errors become LinkdError {type, message, code, details}", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket });
  const s = await srv.nth(0);
  s.open();
  const p1 = c.request("a", { n: 1 });
  const p2 = c.request("b");
  const p3 = c.request("c");
  assert.deepEqual(s.sent.map((m) => [m.type, m.data]), [["a", { n: 1 }], ["b", null], ["c", null]]);
  const [i1, i2, i3] = s.sent.map((m) => m.id);
  assert.equal(new Set([i1, i2, i3]).size, 3);
  s.deliver({ id: i3, error: { type: "FORBIDDEN", message: "no", code: 403, details: { why: 1 } } });
  s.deliver({ id: i2 });
  s.deliver({ id: i1, data: { ok: 1 } });
  s.deliver({ id: "unknown", data: 1 }); // ignored
  assert.deepEqual(await p1, { ok: 1 });
  assert.equal(await p2, null);
  const e = await p3.catch((x) => x);
  assert.ok(e instanceof LinkdError && e instanceof Error);
  assert.deepEqual([e.type, e.message, e.code, e.details, e.local], ["FORBIDDEN", "no", 403, { why: 1 }, false]);
  c.close();
});

test("protocol: send() has no id; pushes reach on(type) and on('*') with meta; off() and the returned function remove listeners", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket });
  const s = await srv.nth(0);
  s.open();
  assert.equal(c.send("typing", { on: true }), true);
  assert.deepEqual(s.sent[0], { type: "typing", data: { on: true } });
  const got = [];
  const f = (d, m) => got.push(["f", d, m]);
  const unsubscribe = c.on("x", (d) => got.push(["g", d]));
  c.on("x", f);
  c.on("*", (d, m) => got.push(["*", m.type]));
  s.deliver({ type: "x", data: 1 });
  s.deliver({ type: "x", data: 2, room: "r", seq: 7 });
  c.off("x", f);
  unsubscribe();
  s.deliver({ type: "x", data: 3 });
  assert.deepEqual(got, [
    ["g", 1], ["f", 1, { type: "x" }], ["*", "x"],
    ["g", 2], ["f", 2, { type: "x", room: "r", seq: 7 }], ["*", "x"],
    ["*", "x"],
  ]);
  c.close();
});

test("protocol: linkd's errors without an id and throwing listeners go to onError; non-JSON and binary frames are ignored", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket });
  const errors = [];
  c.onError((e) => errors.push(e.type));
  const s = await srv.nth(0);
  s.open();
  s.fire("message", { data: "not json" });
  s.fire("message", { data: new ArrayBuffer(4) });
  s.deliver({ error: { type: "RATE_LIMITED", message: "too many messages", code: 429 } });
  c.on("boom", () => {
    throw new Error("listener bug");
  });
  const after = [];
  c.on("boom", (d) => after.push(d));
  s.deliver({ type: "boom", data: 1 });
  assert.deepEqual(errors, ["RATE_LIMITED", "LISTENER_ERROR"]);
  assert.deepEqual(after, [1], "a throwing listener does not stop the others");
  c.close();
});

test("protocol: offline queue — requests and sends wait while connecting, go out in order on open; past queueSize QUEUE_FULL / false", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, queueSize: 3 });
  const p = [c.request("one"), c.request("two")];
  assert.equal(c.send("three"), true);
  assert.equal(c.queued, 3);
  const full = await c.request("four").catch((e) => e);
  assert.deepEqual([full.type, full.code], ["QUEUE_FULL", 0]);
  assert.match(full.message, /^four: not connected and 3 messages already wait/);
  assert.equal(c.send("five"), false);
  const s = await srv.nth(0);
  assert.deepEqual(s.sent, []);
  s.open();
  assert.deepEqual(s.sent.map((m) => m.type), ["one", "two", "three"]);
  assert.equal(c.queued, 0);
  s.deliver({ id: s.sent[1].id, data: 2 });
  s.deliver({ id: s.sent[0].id, data: 1 });
  assert.deepEqual(await Promise.all(p), [1, 2]);
  c.close();
});

test("protocol: a queued request's timeout runs while offline (LOCAL_TIMEOUT, not sent later); queueSize 0 fails at once with NOT_CONNECTED", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket });
  const e = await c.request("late", null, { timeoutMs: 30 }).catch((x) => x);
  assert.deepEqual([e.type, e.code], ["LOCAL_TIMEOUT", 0]);
  assert.match(e.message, /late: no reply within 30 ms \(not connected\)/);
  const s = await srv.nth(0);
  s.open();
  c.send("after");
  assert.deepEqual(s.sent.map((m) => m.type), ["after"], "the timed-out request was not sent");
  c.close();

  const c0 = connect("ws://h/ws", { WebSocket: srv.WebSocket, queueSize: 0 });
  const n = await c0.request("x").catch((x) => x);
  assert.equal(n.type, "NOT_CONNECTED");
  assert.equal(c0.send("y"), false);
  c0.close();
});

test("protocol: abort signal rejects with ABORTED; a reply arriving after it is ignored", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket });
  const s = await srv.nth(0);
  s.open();
  const ac = new AbortController();
  const p = c.request("slow", null, { signal: ac.signal });
  ac.abort();
  assert.equal((await p.catch((e) => e)).type, "ABORTED");
  s.deliver({ id: s.sent[0].id, data: 1 });
  assert.equal((await c.request("x", null, { signal: AbortSignal.abort() }).catch((e) => e)).type, "ABORTED");
  c.close();
});

test("protocol: a drop fails in-flight requests with DISCONNECTED (not resent); queued ones wait for the next connection", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const a = await srv.nth(0);
  a.open();
  const inflight = c.request("inflight");
  a.drop();
  const e = await inflight.catch((x) => x);
  assert.deepEqual([e.type, e.code], ["DISCONNECTED", 0]);
  assert.equal(c.state, "reconnecting");
  const queued = c.request("queued");
  const b = await srv.nth(1);
  b.open();
  assert.deepEqual(b.sent.map((m) => m.type), ["queued"]);
  b.deliver({ id: b.sent[0].id, data: "ok" });
  assert.equal(await queued, "ok");
  c.close();
});

test("protocol: states connecting -> open -> reconnecting -> open -> closed; onOpen {reconnected}; onClose {code, willReconnect}; ready()", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const states = [c.state];
  const opens = [];
  const closes = [];
  c.onStateChange((s) => states.push(s));
  c.onOpen((i) => opens.push(i.reconnected));
  c.onClose((i) => closes.push([i.code, i.willReconnect]));
  const r = c.ready();
  (await srv.nth(0)).refuse(); // a failed first attempt: still "connecting"
  assert.equal(c.state, "connecting");
  (await srv.nth(1)).open();
  await r;
  srv.sockets[1].drop(1001);
  (await srv.nth(2)).open();
  await c.ready(1000);
  c.close();
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open", "closed"]);
  assert.deepEqual(opens, [false, true]);
  assert.deepEqual(closes, [[1001, true], [1000, false]]);
  assert.deepEqual(srv.sockets[2].closedWith, { code: 1000, reason: "" });
  assert.equal((await c.ready().catch((e) => e)).type, "CLOSED");
  assert.equal((await c.request("x").catch((e) => e)).type, "CLOSED");
  assert.equal(c.send("x"), false);
});

test("protocol: reconnect: false — a drop ends in 'closed', queued requests fail with CLOSED", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: false });
  const s = await srv.nth(0);
  s.open();
  const closes = [];
  c.onClose((i) => closes.push(i.willReconnect));
  s.drop();
  assert.equal(c.state, "closed");
  assert.deepEqual(closes, [false]);
  assert.equal((await c.request("x").catch((e) => e)).type, "CLOSED");
  await delay(50);
  assert.equal(srv.sockets.length, 1, "no second attempt");
});

test("protocol: close() while connecting rejects queued requests with CLOSED and makes no further attempt", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const p = c.request("x");
  await srv.nth(0);
  c.close();
  assert.equal((await p.catch((e) => e)).type, "CLOSED");
  assert.equal(c.state, "closed");
  await delay(80);
  assert.equal(srv.sockets.length, 1);
});

test("protocol: backoff grows exponentially with jitter up to maxDelayMs, and a token function that throws is retried", async () => {
  const srv = fakeServer();
  const errors = [];
  let n = 0;
  const c = connect("ws://h/ws", {
    WebSocket: srv.WebSocket,
    reconnect: { initialDelayMs: 40, maxDelayMs: 160 },
    token: () => {
      if (++n === 2) throw new Error("token service down");
      return "t";
    },
  });
  c.onError((e) => errors.push(e.type));
  const times = [];
  // attempts: #1 at once, then the token fails once, then refusals
  for (let i = 0; i < 5; i++) {
    const s = await srv.nth(i, 5000);
    times.push(Date.now());
    s.refuse();
  }
  c.close();
  assert.deepEqual(errors, ["TOKEN_ERROR"]);
  // delays (full = 40, 80, 160, 160, 160; the wait is in [full/2, full]); the token failure spent the 40
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  const lo = [40 / 2 + 80 / 2, 160 / 2, 160 / 2, 160 / 2];
  gaps.forEach((g, i) => assert.ok(g >= lo[i] - 5, `gap ${i} = ${g} ms, want >= ${lo[i]} (gaps ${gaps})`));
  gaps.forEach((g, i) => assert.ok(g <= 400 + i * 200, `gap ${i} = ${g} ms: too long (gaps ${gaps})`));
});

// --- recovery -----------------------------------------------------------------

/** Opens connection #n and hands it its linkd.session. */
async function session(srv, n, token, epoch = "e1") {
  const s = await srv.nth(n);
  s.open();
  s.deliver({ type: "linkd.session", data: { token, epoch, windowMs: 5000, history: 10 } });
  return s;
}

test("recovery (client side): resume is the first message, with the last token and per-room positions; overlap dropped; replayed flagged; onRecover", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const got = [];
  c.on("m", (d, meta) => got.push([d, meta.room, meta.seq, !!meta.replayed]));
  const recs = [];
  c.onRecover((r) => recs.push(r));
  const a = await session(srv, 0, "T1");
  assert.deepEqual(c.sessionInfo, { epoch: "e1", windowMs: 5000, history: 10 });
  a.deliver({ type: "m", data: "a1", room: "r", seq: 1 });
  a.deliver({ type: "m", data: "a2", room: "r", seq: 2 });
  a.deliver({ type: "m", data: "b1", room: "s", seq: 10 });
  assert.deepEqual(c.positions(), { r: 2, s: 10 });
  a.drop();
  const queued = c.request("q");
  const b = await srv.nth(1);
  b.open();
  assert.equal(c.state, "reconnecting", "not open before linkd.session");
  assert.deepEqual(b.sent, [], "nothing before linkd.session");
  b.deliver({ type: "linkd.session", data: { token: "T2", epoch: "e1", windowMs: 5000, history: 10 } });
  assert.deepEqual(b.sent[0], { type: "linkd.resume", data: { token: "T1", rooms: { r: 2, s: 10 } } });
  assert.equal(b.sent[1].type, "q", "queued messages after the resume");
  assert.equal(c.state, "open");
  b.deliver({ type: "m", data: "a2", room: "r", seq: 2 }); // overlap: delivered already
  b.deliver({ type: "m", data: "a3", room: "r", seq: 3 });
  b.deliver({ type: "m", data: "b2", room: "s", seq: 11 });
  b.deliver({ id: b.sent[1].id, data: "q-ok" });
  b.deliver({ type: "linkd.recovered", data: { recovered: true, missed: 2 } });
  b.deliver({ type: "m", data: "a4", room: "r", seq: 4 });
  assert.equal(await queued, "q-ok");
  assert.deepEqual(recs, [{ recovered: true, missed: 2 }]);
  assert.deepEqual(got, [
    ["a1", "r", 1, false], ["a2", "r", 2, false], ["b1", "s", 10, false],
    ["a3", "r", 3, true], ["b2", "s", 11, true], ["a4", "r", 4, false],
  ]);
  // the next drop resumes with the new connection's token
  b.drop();
  const d = await session(srv, 2, "T3");
  assert.deepEqual(d.sent[0], { type: "linkd.resume", data: { token: "T2", rooms: { r: 4, s: 11 } } });
  c.close();
});

test("recovery (client side): recovered:false is reported with linkd's reason and positions start over", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const a = await session(srv, 0, "T1");
  a.deliver({ type: "m", data: 1, room: "r", seq: 5 });
  a.drop();
  const rec = nextEvent((f) => c.onRecover(f), 3000, "onRecover");
  const b = await session(srv, 1, "T2");
  b.deliver({ type: "linkd.recovered", data: { recovered: false, reason: "history" } });
  assert.deepEqual(await rec, { recovered: false, reason: "history" });
  assert.deepEqual(c.positions(), {});
  const got = [];
  c.on("m", (d) => got.push(d));
  b.deliver({ type: "m", data: "after rejoin", room: "r", seq: 3 });
  assert.deepEqual(got, ["after rejoin"]);
  c.close();
});

test("recovery (client side): a new epoch (linkd restarted) clears the positions, so its low numbers are not taken for duplicates", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const a = await session(srv, 0, "T1", "aaaa");
  a.deliver({ type: "m", data: 1, room: "r", seq: 40 });
  a.drop();
  const b = await session(srv, 1, "T2", "bbbb");
  assert.deepEqual(b.sent[0], { type: "linkd.resume", data: { token: "T1", rooms: { r: 40 } } });
  b.deliver({ type: "linkd.recovered", data: { recovered: false, reason: "epoch" } });
  const got = [];
  c.on("m", (d, m) => got.push(m.seq));
  b.deliver({ type: "m", data: 2, room: "r", seq: 1 });
  assert.deepEqual(got, [1]);
  c.close();
});

test("recovery (client side): cut again before linkd.recovered, the next resume uses the older token (it still names the rooms)", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const a = await session(srv, 0, "T1");
  a.deliver({ type: "m", data: 1, room: "r", seq: 1 });
  a.drop();
  const b = await session(srv, 1, "T2");
  assert.equal(b.sent[0].data.token, "T1");
  b.deliver({ type: "m", data: 2, room: "r", seq: 2 }); // part of the replay arrived
  b.drop();
  const d = await session(srv, 2, "T3");
  assert.deepEqual(d.sent[0].data, { token: "T1", rooms: { r: 2 } });
  c.close();
});

test("recovery (client side): a path without recovery (no linkd.session) reports {recovered:false, reason:'unsupported'} after each reconnect", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast });
  const recs = [];
  c.onRecover((r) => recs.push(r));
  (await srv.nth(0)).open();
  srv.sockets[0].drop();
  const b = await srv.nth(1);
  b.open();
  assert.equal(c.state, "open", "no wait when the previous connection had no session");
  assert.deepEqual(recs, [{ recovered: false, reason: "unsupported" }]);
  assert.deepEqual(b.sent, []);
  c.close();
});

test("recovery (client side): the service re-registered without recovery — the first frame is not linkd.session, or none comes in sessionTimeoutMs", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast, sessionTimeoutMs: 100 });
  const recs = [];
  const got = [];
  c.onRecover((r) => recs.push(r));
  c.on("hello", (d) => got.push(d));
  (await session(srv, 0, "T1")).drop();
  const b = await srv.nth(1);
  b.open();
  b.deliver({ type: "hello", data: 1 });
  assert.deepEqual(recs, [{ recovered: false, reason: "unsupported" }]);
  assert.deepEqual(got, [1], "the frame is delivered");
  assert.deepEqual(b.sent, [], "no resume sent");
  c.close();

  const srv2 = fakeServer();
  const c2 = connect("ws://h/ws", { WebSocket: srv2.WebSocket, reconnect: fast, sessionTimeoutMs: 100 });
  (await session(srv2, 0, "T1")).drop();
  const rec = nextEvent((f) => c2.onRecover(f), 3000, "onRecover");
  (await srv2.nth(1)).open();
  const t0 = Date.now();
  assert.deepEqual(await rec, { recovered: false, reason: "unsupported" });
  assert.ok(Date.now() - t0 >= 90, "after sessionTimeoutMs");
  assert.equal(c2.state, "open");
  c2.close();
});

test("recovery (client side): recover: false never resumes and reports {recovered:false, reason:'disabled'}", async () => {
  const srv = fakeServer();
  const c = connect("ws://h/ws", { WebSocket: srv.WebSocket, reconnect: fast, recover: false });
  const recs = [];
  c.onRecover((r) => recs.push(r));
  (await session(srv, 0, "T1")).drop();
  const b = await session(srv, 1, "T2");
  assert.deepEqual(b.sent, []);
  assert.deepEqual(recs, [{ recovered: false, reason: "disabled" }]);
  c.close();
});
