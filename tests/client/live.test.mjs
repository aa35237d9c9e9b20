// The client against a real linkd and a linkd-sdk service: request/reply,
// error types from the service and from linkd (TIMEOUT, RATE_LIMITED,
// SERVICE_UNAVAILABLE, INVALID_MESSAGE), the local timeout, pushes, the
// offline queue while the service is not registered yet, close(); Node's
// global WebSocket and require().
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { connect, LinkdError } from "linkd-client";
import { cleanup, delay, nextEvent, recordingWebSocket, startLinkd, startService, tmpDir, waitFor, ROOT } from "./helpers.mjs";

const run = promisify(execFile);
let linkd;
let svc;
const clients = [];
const services = [];
const linkds = [];

function client(opts = {}, p = "/ws/c") {
  const c = connect(linkd.ws(p), { reconnect: { initialDelayMs: 50, maxDelayMs: 300 }, requestTimeoutMs: 5000, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  linkd = await startLinkd(["--handler-timeout", "400ms"]);
  linkds.push(linkd);
  svc = await startService(linkd);
  services.push(svc);
});

after(() => cleanup({ clients, services, linkds }));

test("live: request resolves with the reply's data (objects, null, strings, numbers)", async () => {
  const c = client();
  assert.deepEqual(await c.request("echo", { a: [1, "x"], b: null }), { a: [1, "x"], b: null });
  assert.equal(await c.request("echo"), null);
  assert.equal(await c.request("echo", "text é ✓"), "text é ✓");
  assert.equal(await c.request("echo", 42.5), 42.5);
  assert.equal(c.state, "open");
});

test("live: concurrent requests each get their own reply", async () => {
  const c = client();
  const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => c.request("echo", { i })));
  assert.deepEqual(rs.map((r) => r.i), Array.from({ length: 30 }, (_, i) => i));
});

test("live: the service's errors reject with LinkdError {type, message, code, details}", async () => {
  const c = client();
  const f = await c.request("fail").catch((e) => e);
  assert.ok(f instanceof LinkdError);
  assert.deepEqual([f.type, f.code, f.message], ["FORBIDDEN", 403, "not for you"]);
  const v = await c.request("invalid").catch((e) => e);
  assert.equal(v.type, "VALIDATION_ERROR");
  assert.equal(v.code, 422);
  assert.deepEqual(v.details, { field: "x" });
  const nf = await c.request("no.such.type").catch((e) => e);
  assert.equal(nf.type, "NOT_FOUND");
});

test("live: linkd's TIMEOUT (504) when the service does not reply within --handler-timeout", async () => {
  const c = client();
  const t0 = Date.now();
  const e = await c.request("never").catch((x) => x);
  assert.deepEqual([e.type, e.code, e.local], ["TIMEOUT", 504, false]);
  assert.ok(Date.now() - t0 >= 350, "after linkd's 400 ms");
});

test("live: the local timeout (LOCAL_TIMEOUT, code 0) when the reply is later than timeoutMs; the late reply is ignored", async () => {
  const c = client();
  const e = await c.request("sleep", { ms: 300 }, { timeoutMs: 80 }).catch((x) => x);
  assert.deepEqual([e.type, e.code, e.local], ["LOCAL_TIMEOUT", 0, true]);
  assert.match(e.message, /^sleep: no reply within 80 ms$/);
  await delay(350); // the late reply arrives now and must not disturb the next request
  assert.deepEqual(await c.request("echo", 1), 1);
});

test("live: RATE_LIMITED (429) from linkd's token bucket; the connection stays usable", async () => {
  const l = await startLinkd(["--rate-limit", "2", "--rate-burst", "3"]);
  linkds.push(l);
  const s = await startService(l);
  services.push(s);
  const c = connect(l.ws("/ws/c"), { requestTimeoutMs: 5000 });
  clients.push(c);
  const rs = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => c.request("echo", i)));
  const limited = rs.filter((r) => r.status === "rejected");
  assert.ok(limited.length >= 4, `${limited.length} of 8 rate-limited`);
  for (const r of limited) assert.deepEqual([r.reason.type, r.reason.code], ["RATE_LIMITED", 429]);
  assert.deepEqual(rs.filter((r) => r.status === "fulfilled").map((r) => r.value), [0, 1, 2]);
  await waitFor(async () => (await c.request("echo", "again").catch(() => null)) === "again", 5000, "the bucket to refill");
  assert.equal(c.state, "open");
  c.close();
});

test("live: SERVICE_UNAVAILABLE (503) while the service is gone; requests work again once it registers", async () => {
  const l = await startLinkd();
  linkds.push(l);
  let s = await startService(l);
  const c = connect(l.ws("/ws/c"), { requestTimeoutMs: 5000 });
  clients.push(c);
  assert.equal(await c.request("echo", 1), 1);
  await s.stop();
  await waitFor(async () => (await c.request("echo", 2).catch((e) => e))?.type === "SERVICE_UNAVAILABLE", 5000, "SERVICE_UNAVAILABLE");
  const e = await c.request("echo", 3).catch((x) => x);
  assert.deepEqual([e.type, e.code], ["SERVICE_UNAVAILABLE", 503]);
  assert.equal(c.state, "open", "the connection stays");
  s = await startService(l);
  services.push(s);
  assert.equal(await c.request("echo", 4), 4);
  c.close();
});

test("live: pushes from the service (to the connection and to a room) reach on(type); send() reaches the service without a reply", async () => {
  const a = client();
  const b = client();
  const got = [];
  a.on("news", (d, meta) => got.push(["a", d, meta]));
  b.on("news", (d) => got.push(["b", d]));
  await a.request("join", { room: "live-r" });
  await b.request("join", { room: "live-r" });
  await a.request("push", { event: "news", data: { only: "a" } });
  await b.request("emit", { room: "live-r", event: "news", data: { all: 1 } });
  await waitFor(() => got.length === 3, 3000, "three pushes");
  assert.deepEqual(got.find((g) => g[0] === "a" && g[1].only), ["a", { only: "a" }, { type: "news" }]);
  assert.equal(got.filter((g) => g[1].all === 1).length, 2);
  const before = svc.seen.length;
  assert.equal(a.send("echo", { fire: "and forget" }), true);
  await waitFor(() => svc.seen.slice(before).some((m) => m.data?.fire === "and forget"), 3000, "the service to get the send");
});

test("live: a path without recovery: no linkd.session, room pushes carry no room/seq, sessionInfo null", async () => {
  const rec = recordingWebSocket();
  const c = client({ WebSocket: rec.WebSocket });
  await c.request("join", { room: "plain" });
  const got = nextEvent((f) => c.on("plain.push", f), 3000, "a room push");
  await svc.ws.to("plain").emit("plain.push", { x: 1 });
  const [data, meta] = await got;
  assert.deepEqual([data, meta], [{ x: 1 }, { type: "plain.push" }]);
  assert.equal(c.sessionInfo, null);
  assert.ok(!rec.received.some((m) => typeof m.type === "string" && m.type.startsWith("linkd.")), JSON.stringify(rec.received));
  assert.deepEqual(c.positions(), {});
});

test("live: linkd's INVALID_MESSAGE for a bad type reaches the request; answers without an id go to onError", async () => {
  const c = client();
  const e = await c.request("").catch((x) => x);
  assert.deepEqual([e.type, e.code], ["INVALID_MESSAGE", 400]);
  const err = nextEvent((f) => c.onError(f), 3000, "onError");
  c.send("");
  assert.equal((await err).type, "INVALID_MESSAGE");
});

test("live: requests made before the path exists wait in the queue (bounded), then go out in order once the service registers", async () => {
  const l = await startLinkd();
  linkds.push(l);
  const c = connect(l.ws("/ws/late"), { reconnect: { initialDelayMs: 50, maxDelayMs: 200 }, queueSize: 3, requestTimeoutMs: 10000 });
  clients.push(c);
  const states = [];
  c.onStateChange((s) => states.push(s));
  const p = [c.request("echo", 1), c.request("echo", 2), c.request("echo", 3)];
  const full = await c.request("echo", 4).catch((e) => e);
  assert.equal(full.type, "QUEUE_FULL");
  assert.equal(c.send("echo", 5), false);
  await delay(300); // a few refused upgrades (404: no such path yet)
  assert.equal(c.state, "connecting");
  const s = await startService(l, { path: "/ws/late" });
  services.push(s);
  assert.deepEqual(await Promise.all(p), [1, 2, 3]);
  assert.deepEqual(s.seen.map((m) => m.data), [1, 2, 3], "in order, once each");
  assert.deepEqual(states, ["open"]);
  c.close();
});

test("live: close() — state closed, in-flight requests reject with CLOSED, linkd sees the connection go, no reconnect", async () => {
  const c = client();
  assert.equal(await c.request("echo", 1), 1);
  const me = await c.request("whoami");
  const inflight = c.request("sleep", { ms: 500 });
  const closes = [];
  c.onClose((i) => closes.push(i));
  c.close(1000, "bye");
  assert.equal(c.state, "closed");
  const e = await inflight.catch((x) => x);
  assert.equal(e.type, "CLOSED");
  assert.deepEqual(closes, [{ code: 1000, reason: "bye", willReconnect: false }]);
  await waitFor(() => !svc.ws.sockets.has(me.conn), 3000, "the service to see the connection close");
  const n = svc.connects.length;
  await delay(400); // several reconnect delays
  assert.equal(svc.connects.length, n, "no new connection");
});

test("live: Node's global WebSocket is used when there is one (node --experimental-websocket on Node 20, built in on 22)", async () => {
  const script = path.join(tmpDir("global"), "g.mjs");
  const mod = path.join(ROOT, "sdk/client/dist/index.js");
  fs.writeFileSync(
    script,
    `import { connect } from ${JSON.stringify(mod)};
     if (typeof globalThis.WebSocket !== "function") { console.log("NO GLOBAL"); process.exit(3); }
     const c = connect(${JSON.stringify(linkd.ws("/ws/c"))});
     console.log(JSON.stringify(await c.request("echo", { via: "global" })));
     c.close();`,
  );
  const flags = typeof globalThis.WebSocket === "function" ? [] : ["--experimental-websocket"];
  // not spawnSync: the service answering it runs in this process
  const r = await run(process.execPath, ["--no-warnings", ...flags, script], { timeout: 15000 });
  assert.equal(r.stdout.trim(), '{"via":"global"}', r.stderr);
});

test("live: require('linkd-client') gives the CommonJS build", async () => {
  const r = await run(
    process.execPath,
    ["-e", `const m = require("linkd-client"); console.log(typeof m.connect, typeof m.LinkdError, typeof m.LinkdClient)`],
    { timeout: 15000, cwd: path.join(ROOT, "tests/client") },
  );
  assert.equal(r.stdout.trim(), "function function function", r.stderr);
});
