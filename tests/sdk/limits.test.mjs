// Frame limits between linkd and the SDK, against a real linkd: a message
// bigger than the SDK's old fixed 16 MiB read limit gets through both ways,
// and a service that declares a small maxFrameBytes is never sent more
// (linkd answers the client instead: 1009, 413). The second test needs linkd
// to honour RegisterService.max_inbound_frame_bytes.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import sdk from "linkd-sdk";
import { Client, memoryLogger, startLinkd, waitFor } from "./helpers.mjs";

const { createService } = sdk;
const slow = /qemu/.test(process.env.LINKD_CMD || "") ? 5 : 1;
const MiB = 1024 * 1024;

let linkd;
const services = [];
const clients = [];

async function service(name, path, extra = {}) {
  const logger = memoryLogger();
  const s = createService({ name, socketPath: linkd.socket, logger, websocket: { enabled: true, path }, ...extra });
  s.ws.on("echo", (ctx) => ctx.message);
  s.ws.on("size", (ctx) => (typeof ctx.message === "string" ? ctx.message.length : -1));
  s.action(`${name}-size`, { route: `/${name}/size`, method: "POST" }, (ctx) => ({ bytes: ctx.rawBody.length }));
  services.push(s);
  await s.start();
  return { s, logger };
}

async function client(path) {
  const c = await Client.connect(`ws://127.0.0.1:${linkd.port}${path}`);
  clients.push(c);
  return c;
}

before(async () => {
  // the 20 MiB reply is queued to the client at once: the outbound cap must hold it
  linkd = await startLinkd(["--max-message-size", "24m", "--max-frame-size", "32m", "--max-body-size", "24m", "--max-outbound", "48m"]);
});

after(async () => {
  for (const c of clients) c.close();
  for (const s of services) await s.stop();
  await linkd?.stop();
});

test("limits: a 20 MiB WebSocket message reaches an SDK service and its 20 MiB reply reaches the client (linkd --max-message-size 24m --max-frame-size 32m)", async () => {
  const { s, logger } = await service("big", "/ws/big");
  const c = await client("/ws/big");
  const text = "abcdefghij".repeat(2 * MiB); // 20 MiB of JSON string
  const r = await c.request("echo", text, 60000 * slow);
  assert.equal(r.error, undefined, JSON.stringify(r.error));
  assert.equal(typeof r.data, "string");
  assert.equal(r.data.length, text.length);
  assert.ok(r.data === text, "the reply is the message");
  // the link was never dropped: the same connection goes on working
  const small = await c.request("echo", { n: 1 }, 5000 * slow);
  assert.deepEqual(small.data, { n: 1 });
  assert.ok(s.connected);
  assert.ok(!logger.lines.some((l) => /^(warn|error)/.test(l)), logger.lines.join(" | "));
});

test("limits: a service declaring maxFrameBytes 64 KiB is never sent more: a 100 KiB message closes the client with 1009, a 100 KiB request body gets 413; the link and smaller messages go on", async () => {
  // sizes small enough for loopback's socket buffers: linkd has read the whole
  // message when it refuses it, so its close frame is not lost to a reset
  const { s, logger } = await service("small", "/ws/small", { maxFrameBytes: 64 * 1024 });
  const c = await client("/ws/small");
  const ok = await c.request("size", "x".repeat(32 * 1024), 10000 * slow);
  assert.equal(ok.data, 32 * 1024);
  c.send({ type: "size", data: "y".repeat(100 * 1024), id: "too-big" });
  const closed = await c.waitClosed(10000 * slow);
  assert.equal(closed.code, 1009, JSON.stringify(closed));
  const r = await fetch(`${linkd.url}/small/size`, { method: "POST", body: Buffer.alloc(100 * 1024, 0x61), signal: AbortSignal.timeout(10000 * slow) });
  assert.equal(r.status, 413);
  const c2 = await client("/ws/small");
  const again = await c2.request("size", "z".repeat(1000), 5000 * slow);
  assert.equal(again.data, 1000);
  assert.ok(s.connected, "the service link stays");
  assert.ok(!logger.lines.some((l) => l.includes("skipped")), "linkd sent nothing over the declared limit: " + logger.lines.join(" | "));
});
