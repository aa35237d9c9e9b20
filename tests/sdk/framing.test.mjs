// The SDK's framing and its robustness, against a scripted stand-in for
// linkd on a Unix socket (so malformed input can be sent on purpose).
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { after, test } from "node:test";
import sdk from "linkd-sdk";
import { memoryLogger, tmpDir, waitFor } from "./helpers.mjs";

const { FrameReader, encodeFrame, decodeFrame, createService } = sdk;

test("framing: frames split byte by byte and glued together decode in order", () => {
  const a = encodeFrame({ heartbeat: { timestampMs: 42, reply: false } });
  const big = Buffer.alloc(70000, 0x61); // a length needing a 3-byte varint
  const b = encodeFrame({ httpRequest: { requestId: "18446744073709551615", method: "POST", path: "/x", body: big } });
  const c = encodeFrame({ commandResult: { opId: 7, ok: true } });
  const stream = Buffer.concat([a, b, c]);
  const got = [];
  const r = new FrameReader(1 << 20, (body) => got.push(decodeFrame(body)));
  for (let i = 0; i < stream.length; i += i < 200 ? 1 : 997) r.push(stream.subarray(i, i < 200 ? i + 1 : i + 997));
  assert.equal(got.length, 3);
  assert.equal(got[0].message, "heartbeat");
  assert.equal(got[0].heartbeat.timestampMs, "42");
  assert.equal(got[1].httpRequest.requestId, "18446744073709551615", "uint64 kept exactly");
  assert.equal(got[1].httpRequest.body.length, 70000);
  assert.equal(got[2].commandResult.opId, "7");
  const r2 = new FrameReader(1 << 20, (body) => got.push(decodeFrame(body)));
  r2.push(stream);
  assert.equal(got.length, 6);
});

test("framing: a length over the limit and an endless varint are refused", () => {
  const r = new FrameReader(100, () => {});
  assert.throws(() => r.push(Buffer.from([0xff, 0x01])), /exceeds/);
  const r2 = new FrameReader(100, () => {});
  assert.throws(() => r2.push(Buffer.alloc(11, 0xff)), /malformed/);
});

test("framing: field names follow proto/linkd.proto (register_service, ws_* members)", () => {
  const f = decodeFrame(encodeFrame({ registerService: { name: "n", websocket: { enabled: true, path: "/ws/n" } } }).subarray(1));
  assert.equal(f.message, "registerService");
  assert.equal(f.registerService.websocket.path, "/ws/n");
  for (const k of ["wsConnectionEvent", "wsInbound", "wsOutbound", "wsRoomOperation", "wsResponse", "roomsQuery", "closeConnection"]) {
    assert.doesNotThrow(() => encodeFrame({ [k]: {} }), k);
  }
});

/** A stand-in for linkd: records frames, lets the test write anything back. */
async function fakeLinkd() {
  const dir = tmpDir("fake");
  const sockPath = path.join(dir, "fake.sock");
  const links = [];
  const server = net.createServer((s) => {
    const link = { s, frames: [], closed: false };
    links.push(link);
    const reader = new FrameReader(1 << 20, (body) => link.frames.push(decodeFrame(body)));
    s.on("data", (d) => reader.push(d));
    s.on("close", () => (link.closed = true));
    s.on("error", () => {});
  });
  await new Promise((r) => server.listen(sockPath, r));
  return {
    sockPath,
    links,
    server,
    close: () => new Promise((r) => {
      for (const l of links) l.s.destroy();
      server.close(() => r());
    }),
  };
}

const registerOk = encodeFrame({ registerResult: { ok: true, linkdVersion: "fake", maxFrameBytes: 1 << 20 } });

test("robustness: undecodable frames are skipped, the link and the process live on", async (t) => {
  const fake = await fakeLinkd();
  const logger = memoryLogger();
  const svc = createService({ name: "robust", version: "9.9.9", namespace: "ns1", socketPath: fake.sockPath, logger });
  svc.action("a", { route: "/a" }, () => ({ ok: 1 }));
  t.after(async () => {
    await svc.stop();
    await fake.close();
  });
  const started = svc.start();
  await waitFor(() => fake.links[0]?.frames.length === 1, 3000, "registration");
  assert.equal(fake.links[0].frames[0].message, "registerService");
  const reg = fake.links[0].frames[0].registerService;
  assert.equal(reg.routes[0].path, "/a");
  assert.deepEqual([reg.name, reg.version, reg.namespaceName ?? reg.namespace], ["robust", "9.9.9", "ns1"]);
  fake.links[0].s.write(registerOk);
  await started;
  const link = fake.links[0];
  // protobuf garbage with a valid length prefix, then an unknown wire type, then an empty frame
  link.s.write(Buffer.from([3, 0xff, 0xff, 0xff]));
  link.s.write(Buffer.from([2, 0x0f, 0x00]));
  link.s.write(Buffer.from([0]));
  // an HTTP request for no action, a request with a non-JSON body, an inbound for an unknown connection
  link.s.write(encodeFrame({ httpRequest: { requestId: 5, method: "GET", route: "/nope", path: "/nope" } }));
  link.s.write(encodeFrame({ wsInbound: { connectionId: "1.1", messageType: "x", payload: Buffer.from("{not json"), correlationId: "c1" } }));
  link.s.write(encodeFrame({ heartbeat: { timestampMs: 1 } }));
  link.s.write(encodeFrame({ httpRequest: { requestId: 6, method: "GET", route: "/a", path: "/a" } }));
  await waitFor(() => link.frames.filter((f) => f.message === "httpResponse").length === 2, 3000, "two HTTP responses");
  const [r404, r200] = link.frames.filter((f) => f.message === "httpResponse");
  assert.equal(r404.httpResponse.requestId, "5");
  assert.equal(r404.httpResponse.status, 404);
  assert.deepEqual(JSON.parse(r404.httpResponse.body.toString()).error.type, "NOT_FOUND");
  assert.equal(r200.httpResponse.status, 200);
  assert.deepEqual(JSON.parse(r200.httpResponse.body.toString()), { ok: 1 });
  const hb = link.frames.find((f) => f.message === "heartbeat");
  assert.ok(hb && hb.heartbeat.reply, "heartbeat answered with reply=true");
  const bad = link.frames.find((f) => f.message === "wsResponse");
  assert.equal(bad.wsResponse.error.type, "INVALID_MESSAGE");
  assert.equal(link.closed, false, "link kept");
  assert.ok(svc.connected);
});

test("robustness: a broken length prefix drops the link; the service reconnects and registers again", async (t) => {
  const fake = await fakeLinkd();
  const svc = createService({ name: "reco", socketPath: fake.sockPath, logger: memoryLogger(), reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  t.after(async () => {
    await svc.stop();
    await fake.close();
  });
  const started = svc.start();
  await waitFor(() => fake.links[0]?.frames.length === 1, 3000, "registration");
  fake.links[0].s.write(registerOk);
  await started;
  let disconnected = 0;
  svc.on("disconnected", () => disconnected++);
  fake.links[0].s.write(Buffer.alloc(12, 0xff));
  await waitFor(() => fake.links.length === 2 && fake.links[1].frames.length === 1, 3000, "a second registration");
  assert.equal(fake.links[1].frames[0].message, "registerService");
  assert.equal(disconnected, 1);
  // commands while not registered fail at once instead of hanging
  await assert.rejects(svc.ws.join("1.1", "r"), /SERVICE_UNAVAILABLE|Not connected/);
  fake.links[1].s.write(registerOk);
  await waitFor(() => svc.connected, 3000, "registered again");
});

test("robustness: start() keeps trying until the socket appears, and rejects on a refused registration", async (t) => {
  const dir = tmpDir("late");
  const sockPath = path.join(dir, "late.sock");
  const svc = createService({ name: "late", socketPath: sockPath, logger: memoryLogger(), reconnect: { initialDelayMs: 20, maxDelayMs: 100 } });
  let settled = false;
  const p = svc.start().then(
    () => (settled = "ok"),
    (e) => (settled = e),
  );
  await new Promise((r) => setTimeout(r, 150)); // several failed attempts (ENOENT)
  assert.equal(settled, false);
  const server = net.createServer((s) => {
    const reader = new FrameReader(1 << 20, () => s.write(encodeFrame({ registerResult: { ok: false, reason: "route conflict" } })));
    s.on("data", (d) => reader.push(d));
    s.on("error", () => {});
  });
  await new Promise((r) => server.listen(sockPath, r));
  t.after(() => new Promise((r) => server.close(() => r())));
  await p;
  assert.ok(settled instanceof Error, "start() rejected");
  assert.match(settled.message, /route conflict/);
  await svc.stop();
});

after(() => {});
