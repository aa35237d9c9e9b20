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

test("framing: a frame over the limit is skipped as it arrives (never buffered); the frames after it are read", () => {
  const got = [];
  const skipped = [];
  const r = new FrameReader(100, (body) => got.push(decodeFrame(body)), (len) => skipped.push(len));
  const small = encodeFrame({ commandResult: { opId: 1, ok: true } });
  const atLimit = encodeFrame({ httpRequest: { requestId: 2, body: Buffer.alloc(100 - 6, 0x62) } });
  assert.equal(atLimit.length, 101, "a 100-byte frame and its 1-byte length");
  const big = encodeFrame({ httpRequest: { requestId: 3, body: Buffer.alloc(5000, 0x61) } });
  const after = encodeFrame({ commandResult: { opId: 4, ok: true } });
  // the big frame's head glued to a small frame, its tail glued to the next one
  r.push(Buffer.concat([small, big.subarray(0, 40)]));
  assert.deepEqual(skipped, [big.length - 2], "skipped once its length is known");
  assert.equal(r.size, 0, "nothing of the skipped frame is kept");
  for (let i = 40; i < big.length - 10; i += 700) {
    r.push(big.subarray(i, Math.min(i + 700, big.length - 10)));
    assert.equal(r.size, 0, "the skipped frame's bytes are dropped as they arrive");
  }
  r.push(Buffer.concat([big.subarray(big.length - 10), after, atLimit]));
  assert.deepEqual(got.map((f) => f.commandResult?.opId ?? f.httpRequest?.requestId), ["1", "4", "2"]);
  assert.equal(skipped.length, 1);
  // the limit may change between frames (linkd's answer to the registration raises it)
  r.maxFrame = 10000;
  r.push(big);
  assert.equal(got.at(-1).httpRequest.requestId, "3");
});

test("framing: a broken length prefix (endless varint, over 32 bits) throws: the stream cannot be resynchronised", () => {
  const r = new FrameReader(100, () => {});
  assert.throws(() => r.push(Buffer.alloc(11, 0xff)), /malformed/);
  const r2 = new FrameReader(100, () => {});
  assert.throws(() => r2.push(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x10])), /malformed/, "2^32");
  const r3 = new FrameReader(100, () => {});
  assert.doesNotThrow(() => r3.push(Buffer.from([0xff, 0xff, 0xff])), "an unfinished varint waits for more");
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
  // an HttpRequest whose length runs past the end of its frame
  link.s.write(Buffer.from([3, 0x1a, 0x05, 0x08]));
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
  const warned = logger.lines.filter((l) => l.startsWith("warn undecodable frame"));
  assert.ok(warned.length >= 2, "each skipped frame is logged: " + logger.lines.join(" | "));
});

test("robustness: a frame over maxFrameBytes is skipped with a warning; the link lives on and later frames are handled", async (t) => {
  const fake = await fakeLinkd();
  const logger = memoryLogger();
  const svc = createService({ name: "capped", socketPath: fake.sockPath, logger, maxFrameBytes: 64 * 1024 });
  svc.action("a", { route: "/a", method: "POST" }, (ctx) => ({ got: ctx.rawBody.length }));
  t.after(async () => {
    await svc.stop();
    await fake.close();
  });
  const started = svc.start();
  await waitFor(() => fake.links[0]?.frames.length === 1, 3000, "registration");
  assert.equal(fake.links[0].frames[0].registerService.maxInboundFrameBytes, 64 * 1024, "the limit is declared");
  const link = fake.links[0];
  // linkd accepts bigger frames than the service reads: the service's own limit holds
  link.s.write(encodeFrame({ registerResult: { ok: true, linkdVersion: "fake", maxFrameBytes: 32 << 20 } }));
  await started;
  const request = (id, size) => encodeFrame({ httpRequest: { requestId: id, method: "POST", route: "/a", path: "/a", body: Buffer.alloc(size, 0x78) } });
  const over = request(1, 1 << 20);
  // written in pieces, with a request that fits right behind its last piece
  for (let i = 0; i < over.length - 100; i += 100000) link.s.write(over.subarray(i, Math.min(i + 100000, over.length - 100)));
  link.s.write(Buffer.concat([over.subarray(over.length - 100), request(2, 60 * 1024)]));
  link.s.write(request(3, 10));
  await waitFor(() => link.frames.filter((f) => f.message === "httpResponse").length === 2, 5000, "two HTTP responses");
  const answers = link.frames.filter((f) => f.message === "httpResponse").map((f) => [f.httpResponse.requestId, JSON.parse(f.httpResponse.body.toString()).got]);
  assert.deepEqual(answers, [["2", 60 * 1024], ["3", 10]]);
  const skipped = logger.lines.filter((l) => l.startsWith("warn frame from linkd over the size limit skipped"));
  assert.equal(skipped.length, 1, logger.lines.join(" | "));
  assert.match(skipped[0], new RegExp(`"bytes":${over.length - 3}\\b`));
  assert.ok(logger.lines.some((l) => l.startsWith("info linkd's frame limit is above")), "the mismatch of limits is said");
  assert.equal(link.closed, false, "link kept");
  assert.ok(svc.connected);
  assert.equal(fake.links.length, 1, "no reconnection");
});

test("robustness: a reply over linkd's frame limit becomes an error reply (HTTP 500, WebSocket RESPONSE_TOO_LARGE): the client is not left waiting", async (t) => {
  const fake = await fakeLinkd();
  const logger = memoryLogger();
  const svc = createService({ name: "bigreply", socketPath: fake.sockPath, logger, websocket: { enabled: true, path: "/ws/b" } });
  svc.action("big", { route: "/big" }, () => "x".repeat(4096));
  svc.ws.on("big", () => "y".repeat(4096));
  t.after(async () => {
    await svc.stop();
    await fake.close();
  });
  const started = svc.start();
  await waitFor(() => fake.links[0]?.frames.length === 1, 3000, "registration");
  const link = fake.links[0];
  link.s.write(encodeFrame({ registerResult: { ok: true, linkdVersion: "fake", maxFrameBytes: 2048 } }));
  await started;
  link.s.write(encodeFrame({ httpRequest: { requestId: 11, method: "GET", route: "/big", path: "/big" } }));
  link.s.write(encodeFrame({ wsInbound: { connectionId: "1.1", messageType: "big", correlationId: "c9" } }));
  await waitFor(() => link.frames.some((f) => f.message === "httpResponse") && link.frames.some((f) => f.message === "wsResponse"), 3000, "both answers");
  const http = link.frames.find((f) => f.message === "httpResponse").httpResponse;
  assert.deepEqual([http.requestId, http.status, JSON.parse(http.body.toString()).error.type], ["11", 500, "RESPONSE_TOO_LARGE"]);
  const ws = link.frames.find((f) => f.message === "wsResponse").wsResponse;
  assert.deepEqual([ws.correlationId, ws.error?.type, ws.error?.code], ["c9", "RESPONSE_TOO_LARGE", 500]);
  assert.equal(logger.lines.filter((l) => l.startsWith("error") && l.includes("frame limit")).length, 2, logger.lines.join(" | "));
  assert.ok(svc.connected);
});

test("robustness: maxFrameBytes defaults to 64 MiB, is declared at registration, bad values are refused; before registration frames over 1 MiB are skipped", async (t) => {
  assert.equal(sdk.DEFAULT_MAX_FRAME_BYTES, 64 * 1024 * 1024);
  for (const bad of [0, 100, -1, 1.5, 2 ** 32, "1m", NaN]) {
    assert.throws(() => createService({ name: "x", socketPath: "/nonexistent", maxFrameBytes: bad }), /maxFrameBytes/, String(bad));
  }
  const fake = await fakeLinkd();
  const svc = createService({ name: "dflt", socketPath: fake.sockPath, logger: memoryLogger() });
  t.after(async () => {
    await svc.stop();
    await fake.close();
  });
  const started = svc.start();
  await waitFor(() => fake.links[0]?.frames.length === 1, 3000, "registration");
  assert.equal(fake.links[0].frames[0].registerService.maxInboundFrameBytes, 64 * 1024 * 1024);
  // before linkd has answered, nothing big is read (linkd sends only small frames then)
  const link = fake.links[0];
  link.s.write(encodeFrame({ httpRequest: { requestId: 1, body: Buffer.alloc(2 << 20) } }));
  link.s.write(registerOk);
  await started;
  assert.ok(svc.logger.lines.some((l) => l.startsWith("warn frame from linkd over the size limit skipped") && l.includes('"maxFrameBytes":1048576')), svc.logger.lines.join(" | "));
  assert.equal(link.closed, false);
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

test("logs: started before linkd, the service says once at info that it waits for the socket, then that it connected", async (t) => {
  const dir = tmpDir("wait");
  const sockPath = path.join(dir, "linkd.sock");
  const logger = memoryLogger();
  const svc = createService({ name: "early", socketPath: sockPath, logger, reconnect: { initialDelayMs: 10, maxDelayMs: 20 } });
  t.after(() => svc.stop());
  const started = svc.start();
  const tries = () => logger.lines.filter((l) => l.startsWith("debug linkd not reachable")).length;
  await waitFor(() => tries() >= 3, 3000, "several failed attempts");
  const waiting = () => logger.lines.filter((l) => l.startsWith(`info waiting for linkd's socket at ${sockPath}`));
  assert.equal(waiting().length, 1, logger.lines.join(" | "));
  assert.ok(!logger.lines.some((l) => /^(warn|error)/.test(l)), "quiet retries: " + logger.lines.join(" | "));
  const server = net.createServer((s) => {
    const reader = new FrameReader(1 << 20, () => s.write(registerOk));
    s.on("data", (d) => reader.push(d));
    s.on("error", () => {});
  });
  await new Promise((r) => server.listen(sockPath, r));
  t.after(() => new Promise((r) => server.close(() => r())));
  await started;
  assert.ok(logger.lines.some((l) => l.startsWith(`info connected to linkd at ${sockPath}`)), logger.lines.join(" | "));
  assert.ok(logger.lines.some((l) => l.startsWith("info registered with linkd")));
  assert.equal(waiting().length, 1, "said once");
});

after(() => {});
