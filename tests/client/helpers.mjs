// Helpers for the client library's tests: a real linkd, a test service on
// linkd-sdk in this process, bounded waits. Every process is stopped.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import sdk from "linkd-sdk";
import WebSocket from "ws";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const slow = /qemu|valgrind/.test(process.env.LINKD_CMD || "") ? 5 : 1;

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn (sync or async) every 20 ms until it returns truthy; throws after timeoutMs. */
export async function waitFor(fn, timeoutMs = 5000, what = "condition") {
  const end = Date.now() + timeoutMs * slow;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      if (err && err.fatal) throw err;
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` + (last instanceof Error ? `: ${last.message}` : ""));
    await delay(20);
  }
}

/** Resolves with the next call of on(fn) (e.g. client.onRecover), or throws after timeoutMs. */
export function nextEvent(on, timeoutMs = 5000, what = "an event") {
  return new Promise((resolve, reject) => {
    let off = () => {};
    const t = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs * slow);
    off = on((...args) => {
      clearTimeout(t);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

/** A promise with its resolve outside (a gate a test opens). */
export function gate() {
  let open;
  const p = new Promise((r) => (open = r));
  return { wait: () => p, open: () => open() };
}

const tmpDirs = [];
/** A fresh temp dir, removed when the process exits (kept with KEEP_TMP=1). */
export function tmpDir(tag) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `linkd-client-${tag}-`));
  tmpDirs.push(d);
  return d;
}
process.on("exit", () => {
  if (process.env.KEEP_TMP === "1") return;
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/**
 * Starts linkd on a free loopback port with its socket in a fresh temp dir.
 * Returns { url, port, socket, dir, log(), stop(), restart() }.
 */
export async function startLinkd(extraArgs = [], opts = {}) {
  const cmd = (process.env.LINKD_CMD || path.join(ROOT, "linkd")).split(/\s+/).filter(Boolean);
  const dir = opts.dir || tmpDir("linkd");
  const port = opts.port || (await freePort());
  const socket = path.join(dir, "linkd.sock");
  const logFile = path.join(dir, `linkd.${Date.now()}.log`);
  const out = fs.openSync(logFile, "a");
  const proc = spawn(cmd[0], [...cmd.slice(1), "--listen", `127.0.0.1:${port}`, "--socket", socket, ...extraArgs], {
    stdio: ["ignore", out, out],
  });
  fs.closeSync(out);
  let exited = false;
  proc.on("exit", () => (exited = true));
  const url = `http://127.0.0.1:${port}`;
  const h = {
    url,
    port,
    socket,
    dir,
    proc,
    ws: (p) => `ws://127.0.0.1:${port}${p}`,
    log: () => fs.readFileSync(logFile, "utf8"),
    async stop() {
      if (exited) return;
      proc.kill("SIGTERM");
      try {
        await waitFor(() => exited, 10000, "linkd to exit");
      } catch {
        proc.kill("SIGKILL");
      }
    },
    /** Stops linkd and starts a new one on the same port and socket. */
    async restart() {
      await h.stop();
      return startLinkd(extraArgs, { dir, port });
    },
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw Object.assign(new Error("linkd exited: " + h.log().slice(-300)), { fatal: true });
        const r = await fetch(url + "/health", { signal: AbortSignal.timeout(1000) });
        return r.ok && fs.existsSync(socket);
      },
      10000,
      "linkd /health",
    );
  } catch (err) {
    proc.kill("SIGKILL");
    throw err;
  }
  process.on("exit", () => {
    if (!exited) proc.kill("SIGKILL");
  });
  return h;
}

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * The test service, on linkd-sdk, in this process. Message types:
 *   echo (data back), whoami ({conn, user}), fail (FORBIDDEN), invalid (VALIDATION_ERROR with details),
 *   sleep {ms} (replies after ms), never (no reply), join {room}, leave {room},
 *   emit {room, event, data} (room push), push {event, data} (to this connection only),
 *   kick {code, reason} (the service closes this connection).
 * Returns the SDK service with `seen` (messages by type) and `connects` (connection ids).
 */
export async function startService(linkd, { path: wsPath = "/ws/c", websocket = {}, name = "ctest" } = {}) {
  const { createService, ForbiddenError, ValidationError } = sdk;
  const s = createService({
    name,
    socketPath: linkd.socket,
    logger: quiet,
    reconnect: { initialDelayMs: 50, maxDelayMs: 300 },
    websocket: { enabled: true, path: wsPath, maxConnectionsPerUser: 100, ...websocket },
  });
  s.seen = [];
  s.connects = [];
  s.ws.onConnect((ctx) => {
    s.connects.push(ctx.socket.id);
  });
  s.ws.use(async (ctx, next) => {
    s.seen.push({ type: ctx.messageType, data: ctx.message, conn: ctx.socket.id });
    return next();
  });
  s.ws.on("echo", (ctx) => ctx.message);
  s.ws.on("whoami", (ctx) => ({ conn: ctx.socket.id, user: ctx.auth.userId }));
  s.ws.on("fail", () => {
    throw new ForbiddenError("not for you");
  });
  s.ws.on("invalid", () => {
    throw new ValidationError("bad field", { field: "x" });
  });
  s.ws.on("sleep", async (ctx) => {
    await delay(ctx.message?.ms ?? 100);
    return { slept: ctx.message?.ms ?? 100 };
  });
  s.ws.on("never", () => new Promise(() => {}));
  s.ws.on("join", async (ctx) => {
    await ctx.join(ctx.message.room);
    return { joined: ctx.message.room, conn: ctx.socket.id };
  });
  s.ws.on("leave", async (ctx) => {
    await ctx.leave(ctx.message.room);
    return { left: ctx.message.room };
  });
  s.ws.on("emit", async (ctx) => {
    await ctx.to(ctx.message.room).emit(ctx.message.event, ctx.message.data);
    return { ok: true };
  });
  s.ws.on("push", async (ctx) => {
    await ctx.send(ctx.message.event, ctx.message.data);
    return { ok: true };
  });
  s.ws.on("kick", (ctx) => {
    // reply first, then close: the client sees the reply before the close
    setTimeout(() => void ctx.disconnect(ctx.message?.code ?? 4000, ctx.message?.reason ?? "kicked").catch(() => {}), 20);
    return { kicking: true };
  });
  await s.start();
  return s;
}

/** An HS256 JWT. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/**
 * A WebSocket class (the `ws` package) that records its instances and the
 * frames both ways, and lets a test cut a connection abruptly (no close
 * frame: what a lost network looks like to linkd) or rewrite what is sent.
 */
export function recordingWebSocket({ rewrite } = {}) {
  const sockets = [];
  const sent = [];
  const received = [];
  class RecWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
      this.on("message", (data, isBinary) => {
        if (!isBinary) received.push(JSON.parse(data.toString()));
      });
    }
    send(frame) {
      const out = rewrite ? rewrite(frame) : frame;
      sent.push(JSON.parse(out));
      super.send(out);
    }
  }
  return {
    WebSocket: RecWebSocket,
    sockets,
    sent,
    received,
    /** The live socket (the last one made). */
    get current() {
      return sockets[sockets.length - 1];
    },
    /** Drops the current connection without a close frame. */
    cut() {
      sockets[sockets.length - 1].terminate();
    },
  };
}

/** Closes clients, stops services and linkd, in that order, whatever fails. */
export async function cleanup({ clients = [], services = [], linkds = [] }) {
  for (const c of clients) {
    try {
      c.close();
    } catch {}
  }
  for (const s of services) await s?.stop().catch(() => {});
  for (const l of linkds) await l?.stop().catch(() => {});
}
