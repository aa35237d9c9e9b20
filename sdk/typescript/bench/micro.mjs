// Micro-benchmark of the SDK alone: a fake linkd (a child process on a Unix
// socket) sends WebSocketInbound "echo" frames the way linkd does (many
// frames per write, a fixed number in flight), the SDK service answers each
// with a WebSocketResponse from the handler a user would write
// (`service.ws.on("echo", (ctx) => ctx.message)`); the fake counts the
// answers without decoding them. Reports messages/s and the service's CPU
// time per message.
//
//   node bench/micro.mjs [SECONDS=5] [IN_FLIGHT=400] [CONNECTIONS=50]
//   (npm run build first: it loads ../dist)
import { fork } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const sdk = require(path.join(here, ".."));

const SECONDS = process.argv[2] === "fake" ? 0 : Number(process.argv[2] || process.env.MICRO_T || 5);

if (process.argv[2] === "fake") {
  // ---- the fake linkd -------------------------------------------------------
  const [sockPath, inFlight, conns, seconds] = process.argv.slice(3).map((x, i) => (i ? Number(x) : x));
  const payload = Buffer.from(JSON.stringify({ n: 1, p: "x".repeat(64) }));
  const user = { userId: "", username: "", roles: [], tenantId: "", authenticated: false };
  const frames = [];
  for (let i = 0; i < 1000; i++) {
    frames.push(sdk.encodeFrame({ wsInbound: { connectionId: `1.${(i % conns) + 1}`, serviceName: "micro", messageType: "echo",
                                               payload, correlationId: String(i + 1), user } }));
  }
  const all = Buffer.concat(frames);
  const offsets = [0];
  for (const f of frames) offsets.push(offsets[offsets.length - 1] + f.length);
  const registered = sdk.encodeFrame({ registerResult: { ok: true, linkdVersion: "fake", maxFrameBytes: 1 << 24 } });
  const server = net.createServer((s) => {
    let started = false, sent = 0, answered = 0, counting = false, counted = 0, t0 = 0;
    let pending = Buffer.alloc(0);
    // one write per batch, as linkd writes once per loop turn: a slice of the frames laid end to end
    const send = (k) => {
      while (k > 0) {
        const i = sent % frames.length, m = Math.min(k, frames.length - i);
        s.write(all.subarray(offsets[i], offsets[i + m]));
        sent += m;
        k -= m;
      }
    };
    s.on("data", (d) => {
      let buf = pending.length ? Buffer.concat([pending, d]) : d;
      let off = 0, n = 0;
      for (;;) {
        let len = 0, shift = 0, i = off, ok = false;
        while (i < buf.length) { const b = buf[i++]; len += (b & 0x7f) * 2 ** shift; shift += 7; if (!(b & 0x80)) { ok = true; break; } }
        if (!ok || buf.length - i < len) break;
        off = i + len;
        n++;
      }
      pending = buf.subarray(off);
      if (!started) {   // the registration: answer it, then start
        started = true;
        s.write(registered);
        setTimeout(() => {
          send(inFlight);
          setTimeout(() => { counting = true; t0 = process.hrtime.bigint(); process.send({ start: true }); }, 1000);
          setTimeout(() => {
            const secs = Number(process.hrtime.bigint() - t0) / 1e9;
            process.send({ done: true, msgs: counted, secs });
          }, 1000 + seconds * 1000);
        }, 100);
        return;
      }
      answered += n;
      if (counting) counted += n;
      if (n) send(n);
    });
    s.on("error", () => {});
  });
  server.listen(sockPath, () => process.send({ listening: true }));
} else {
  // ---- the service under test -------------------------------------------------
  const inFlight = Number(process.argv[3] || 400);
  const conns = Number(process.argv[4] || 50);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "linkd-sdk-micro-"));
  const sockPath = path.join(dir, "fake.sock");
  const child = fork(fileURLToPath(import.meta.url), ["fake", sockPath, String(inFlight), String(conns), String(SECONDS)]);
  await new Promise((r) => child.once("message", r));
  const service = sdk.createService({ name: "micro", socketPath: sockPath, logger: sdk.silentLogger,
                                      websocket: { enabled: true, path: "/ws/micro" } });
  service.ws.on("echo", (ctx) => ctx.message);
  await service.start();
  let cpu0;
  child.on("message", async (m) => {
    if (m.start) cpu0 = process.cpuUsage();
    if (!m.done) return;
    const cpu = process.cpuUsage(cpu0);
    const us = (cpu.user + cpu.system) / m.msgs;
    console.log(`RESULT sdk_micro msgs_per_s=${Math.round(m.msgs / m.secs)} service_cpu_us_per_msg=${us.toFixed(2)} ` +
                `service_cpu_pct=${(100 * (cpu.user + cpu.system) / 1e6 / m.secs).toFixed(0)} in_flight=${inFlight} connections=${conns} seconds=${m.secs.toFixed(1)}`);
    child.kill();
    await service.stop();
    fs.rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  });
}
