// Connection recovery through a real linkd (issue 10 item 2). Run by
// tests/t_client.sh (TESTS=client tests/run.sh), or alone:
//   cd tests/client && node --test recovery.test.mjs
//
// The client is cut without a close frame (what a lost network looks like to
// linkd) and held off by its token function (a gate the test opens) while the
// service pushes to its rooms; then it comes back and must get, in order and
// once each, every push it missed — or {recovered:false} when the gap is
// longer than the history, the window passed, the token is forged or another
// user's, or linkd restarted (a new epoch).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { connect } from "linkd-client";
import { cleanup, delay, gate, jwt, nextEvent, recordingWebSocket, startLinkd, startService, waitFor } from "./helpers.mjs";

const SECRET = "client-recovery-secret";
const WINDOW_MS = 4000;
const HISTORY = 10;
let linkd;
let svc; // /ws/rec: window 4 s, history 10
let short; // /ws/short: window 300 ms
const clients = [];
const services = [];
const linkds = [];

before(async () => {
  linkd = await startLinkd(["--jwt-secret", SECRET]);
  linkds.push(linkd);
  svc = await startService(linkd, { name: "rec", path: "/ws/rec", websocket: { recovery: { windowMs: WINDOW_MS, history: HISTORY } } });
  short = await startService(linkd, { name: "short", path: "/ws/short", websocket: { recovery: { windowMs: 300, history: HISTORY } } });
  services.push(svc, short);
});

after(() => cleanup({ clients, services, linkds }));

/**
 * A client on `p` whose reconnects wait at `held` until the test opens it.
 * Returns { c, rec, held, got } — got: every push of type "m" as [data, room, seq, replayed].
 */
function heldClient(p = "/ws/rec", { user, rewrite, target = linkd } = {}) {
  const rec = recordingWebSocket({ rewrite });
  let held = gate();
  let calls = 0;
  const c = connect(target.ws(p), {
    WebSocket: rec.WebSocket,
    reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    requestTimeoutMs: 5000,
    token: async () => {
      if (++calls > 1) await held.wait();
      return user ? jwt(SECRET, { sub: user }) : undefined;
    },
  });
  clients.push(c);
  const got = [];
  c.on("m", (d, meta) => got.push([d, meta.room, meta.seq, !!meta.replayed]));
  const h = {
    c,
    rec,
    got,
    release: () => held.open(),
    rehold: () => (held = gate()),
  };
  return h;
}

async function pushes(service, room, from, to) {
  for (let i = from; i <= to; i++) await service.ws.to(room).emit("m", `${room}-${i}`);
}

/** linkd's own refusal: a resume was sent and linkd answered recovered:false (not the client's "unsupported"). */
function refusedByLinkd(h, r) {
  assert.equal(r.recovered, false);
  assert.ok(r.reason && r.reason !== "unsupported" && r.reason !== "disabled", `linkd's reason, got ${JSON.stringify(r)}`);
  assert.ok(h.rec.sent.some((m) => m.type === "linkd.resume"), "a resume was sent");
}

async function cutAndWait(h) {
  await waitFor(() => h.c.sessionInfo, 3000, "linkd.session on the connection to cut");
  h.rec.cut();
  await waitFor(() => h.c.state === "reconnecting", 5000, "the client to see the drop");
}

test("recovery: linkd sends linkd.session right after the upgrade on a recovery path (token, epoch, windowMs, history), and room pushes carry room and seq", async () => {
  const h = heldClient();
  await h.c.ready(5000);
  await waitFor(() => h.c.sessionInfo, 3000, "linkd.session");
  const first = h.rec.received[0];
  assert.equal(first.type, "linkd.session", "the first frame");
  assert.equal(typeof first.data.token, "string");
  assert.match(first.data.epoch, /^[0-9a-f]+$/);
  assert.deepEqual([first.data.windowMs, first.data.history], [WINDOW_MS, HISTORY]);
  await h.c.request("join", { room: "s1" });
  await pushes(svc, "s1", 1, 2);
  await waitFor(() => h.got.length === 2, 3000, "two pushes");
  assert.deepEqual(h.got.map((g) => g[1]), ["s1", "s1"]);
  assert.ok(h.got[1][2] === h.got[0][2] + 1, `consecutive seqs: ${JSON.stringify(h.got)}`);
  h.c.close();
});

test("recovery: a drop within the window with 5 missed pushes in two rooms — resume first, all 5 replayed in order, once each, then recovered:true; rooms restored", async () => {
  const h = heldClient();
  await h.c.request("join", { room: "g" });
  await h.c.request("join", { room: "h" });
  await pushes(svc, "g", 1, 3);
  await waitFor(() => h.got.length === 3, 3000, "3 pushes before the drop");
  const sentBefore = h.rec.sent.length;
  await cutAndWait(h);
  await pushes(svc, "g", 4, 5);
  await pushes(svc, "h", 1, 2);
  await pushes(svc, "g", 6, 6);
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  assert.deepEqual(await recovered, { recovered: true, missed: 5 });
  assert.equal(h.rec.sent[sentBefore]?.type, "linkd.resume", "the first message on the new connection");
  assert.deepEqual(
    h.got.map((g) => g[0]),
    ["g-1", "g-2", "g-3", "g-4", "g-5", "h-1", "h-2", "g-6"],
    "in order, no duplicates",
  );
  assert.deepEqual(h.got.slice(3).map((g) => g[3]), [true, true, true, true, true], "flagged replayed");
  // the rooms came back: a push after the recovery arrives live
  await pushes(svc, "h", 3, 3);
  await waitFor(() => h.got.length === 9, 3000, "a live push after recovery");
  assert.deepEqual(h.got[8].slice(0, 2), ["h-3", "h"]);
  assert.equal(h.got[8][3], false);
  h.c.close();
});

test("recovery: the first message on the new connection is linkd.resume with the previous connection's token and the rooms' positions", async () => {
  const h = heldClient();
  await h.c.request("join", { room: "p1" });
  await pushes(svc, "p1", 1, 2);
  await waitFor(() => h.got.length === 2, 3000, "2 pushes");
  const oldToken = h.rec.received.find((m) => m.type === "linkd.session").data.token;
  const sentBefore = h.rec.sent.length;
  await cutAndWait(h);
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  assert.equal((await recovered).recovered, true);
  const first = h.rec.sent[sentBefore];
  assert.deepEqual(first, { type: "linkd.resume", data: { token: oldToken, rooms: { p1: h.got[1][2] } } });
  h.c.close();
});

test("recovery: a gap longer than the history (15 pushes, history 10) — recovered:false, nothing replayed, the application refetches", async () => {
  const h = heldClient();
  await h.c.request("join", { room: "long" });
  await pushes(svc, "long", 1, 1);
  await waitFor(() => h.got.length === 1, 3000, "1 push");
  await cutAndWait(h);
  await pushes(svc, "long", 2, 16);
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  refusedByLinkd(h, await recovered);
  assert.deepEqual(h.got.map((g) => g[0]), ["long-1"], "no partial replay");
  assert.deepEqual(h.c.positions(), {});
  // not in the room any more (no rooms restored): the application joins again
  await h.c.request("join", { room: "long" });
  await pushes(svc, "long", 17, 17);
  await waitFor(() => h.got.length === 2, 3000, "a push after rejoining");
  h.c.close();
});

test("recovery: back after the window passed (300 ms) — recovered:false", async () => {
  const h = heldClient("/ws/short");
  await h.c.request("join", { room: "w" });
  await pushes(short, "w", 1, 1);
  await waitFor(() => h.got.length === 1, 3000, "1 push");
  await cutAndWait(h);
  await pushes(short, "w", 2, 2);
  await delay(900); // three windows
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  refusedByLinkd(h, await recovered);
  assert.deepEqual(h.got.map((g) => g[0]), ["w-1"]);
  h.c.close();
});

test("recovery: a forged resume token — recovered:false, and the new connection works", async () => {
  const flip = (t) => t.slice(0, -2) + (t.at(-2) === "A" ? "B" : "A") + t.at(-1);
  const h = heldClient("/ws/rec", {
    rewrite: (frame) => {
      const m = JSON.parse(frame);
      if (m.type !== "linkd.resume") return frame;
      m.data.token = flip(m.data.token);
      return JSON.stringify(m);
    },
  });
  await h.c.request("join", { room: "f" });
  await pushes(svc, "f", 1, 1);
  await waitFor(() => h.got.length === 1, 3000, "1 push");
  await cutAndWait(h);
  await pushes(svc, "f", 2, 3);
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  refusedByLinkd(h, await recovered);
  assert.deepEqual(h.got.map((g) => g[0]), ["f-1"]);
  assert.equal(await h.c.request("echo", "still fine"), "still fine");
  h.c.close();
});

test("recovery: another user's token — refused (recovered:false) for bob; alice then resumes with it (recovered:true)", async () => {
  let aliceToken = null;
  const alice = heldClient("/ws/rec", { user: "alice" });
  const bob = heldClient("/ws/rec", {
    user: "bob",
    rewrite: (frame) => {
      const m = JSON.parse(frame);
      if (m.type !== "linkd.resume") return frame;
      m.data.token = aliceToken;
      return JSON.stringify(m);
    },
  });
  await alice.c.request("join", { room: "u" });
  await bob.c.request("join", { room: "u" });
  await pushes(svc, "u", 1, 1);
  await waitFor(() => alice.got.length === 1 && bob.got.length === 1, 3000, "1 push each");
  aliceToken = alice.rec.received.find((m) => m.type === "linkd.session").data.token;
  await cutAndWait(alice);
  await cutAndWait(bob);
  await pushes(svc, "u", 2, 3);
  const bobRec = nextEvent((f) => bob.c.onRecover(f), 10000, "bob's onRecover");
  bob.release();
  refusedByLinkd(bob, await bobRec); // alice's token is not bob's
  assert.deepEqual(bob.got.map((g) => g[0]), ["u-1"]);
  const aliceRec = nextEvent((f) => alice.c.onRecover(f), 10000, "alice's onRecover");
  alice.release();
  assert.deepEqual(await aliceRec, { recovered: true, missed: 2 });
  assert.deepEqual(alice.got.map((g) => g[0]), ["u-1", "u-2", "u-3"]);
  alice.c.close();
  bob.c.close();
});

test("recovery: a push to the dropped connection alone during the gap is not replayed (only room pushes are)", async () => {
  const h = heldClient();
  await h.c.request("join", { room: "solo" });
  const me = await h.c.request("whoami");
  await cutAndWait(h);
  await svc.ws.send(me.conn, "m", "direct").catch(() => {});
  await pushes(svc, "solo", 1, 1);
  const recovered = nextEvent((f) => h.c.onRecover(f), 10000, "onRecover");
  h.release();
  assert.deepEqual(await recovered, { recovered: true, missed: 1 });
  assert.deepEqual(h.got.map((g) => g[0]), ["solo-1"]);
  h.c.close();
});

test("recovery: linkd restarted (new epoch) — recovered:false; the numbering starts over and new pushes are delivered", async () => {
  const l = await startLinkd();
  linkds.push(l);
  const s = await startService(l, { name: "ep", path: "/ws/ep", websocket: { recovery: { windowMs: 10000, history: HISTORY } } });
  services.push(s);
  const h = heldClient("/ws/ep", { target: l });
  await h.c.request("join", { room: "e" });
  await pushes(s, "e", 1, 3);
  await waitFor(() => h.got.length === 3, 3000, "3 pushes");
  await waitFor(() => h.c.sessionInfo, 3000, "a session");
  const epoch1 = h.c.sessionInfo.epoch;
  const l2 = await l.restart();
  linkds.push(l2);
  await waitFor(() => h.c.state === "reconnecting", 5000, "the drop");
  const recovered = nextEvent((f) => h.c.onRecover(f), 15000, "onRecover");
  h.release();
  refusedByLinkd(h, await recovered);
  assert.notEqual(h.c.sessionInfo.epoch, epoch1, "a new epoch");
  await h.c.request("join", { room: "e" });
  await pushes(s, "e", 4, 4);
  await waitFor(() => h.got.length === 4, 5000, "a push in the new epoch (low seq, not taken for a duplicate)");
  h.c.close();
});
