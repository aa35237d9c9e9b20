// Helpers for the SDK tests: start a real linkd, wait for things, talk
// WebSocket to it. Every wait is bounded; every process is stopped.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

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
  const end = Date.now() + timeoutMs;
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

export function tmpDir(tag) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `linkd-sdk-${tag}-`));
}

const slow = /qemu/.test(process.env.LINKD_CMD || "") ? 5 : 1;

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
    log: () => fs.readFileSync(logFile, "utf8"),
    async stop() {
      if (exited) return;
      proc.kill("SIGTERM");
      try {
        await waitFor(() => exited, 10000 * slow, "linkd to exit");
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
      10000 * slow,
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

/** A WebSocket client that queues what it receives. */
export class Client {
  static async connect(url, { headers, timeoutMs = 5000 } = {}) {
    const c = new Client(new WebSocket(url, { headers }));
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("WebSocket connect timeout: " + url)), timeoutMs);
      c.ws.once("open", () => {
        clearTimeout(t);
        resolve();
      });
      c.ws.once("unexpected-response", (_req, res) => {
        clearTimeout(t);
        reject(Object.assign(new Error(`upgrade refused: HTTP ${res.statusCode}`), { status: res.statusCode }));
      });
      c.ws.once("error", (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
    return c;
  }

  constructor(ws) {
    this.ws = ws;
    this.messages = [];
    this.waiters = [];
    this.closed = null;
    this.seq = 0;
    ws.on("message", (data, isBinary) => {
      let m;
      try {
        m = isBinary ? data : JSON.parse(data.toString());
      } catch {
        m = { unparsed: data.toString() };
      }
      this.messages.push(m);
      this.pump();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.pump();
    });
    ws.on("error", () => {});
  }

  pump() {
    for (const w of [...this.waiters]) {
      const i = this.messages.findIndex(w.pred);
      if (i >= 0) {
        const [m] = this.messages.splice(i, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(m);
      } else if (this.closed && w.onClose) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.reject(new Error(`connection closed (${this.closed.code}) while waiting for ${w.what}`));
      }
    }
  }

  /** The next received message matching pred (removed from the queue). */
  next(pred = () => true, timeoutMs = 5000, what = "a message") {
    return new Promise((resolve, reject) => {
      const w = { pred, resolve, reject, what, onClose: true };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out waiting for ${what}; queue: ${JSON.stringify(this.messages).slice(0, 300)}`));
      }, timeoutMs);
      this.waiters.push(w);
      this.pump();
    });
  }

  /** The next push of this type. */
  event(type, timeoutMs = 5000) {
    return this.next((m) => m && m.type === type, timeoutMs, `event ${type}`);
  }

  /** Sends {type, data, id} and resolves with the reply carrying that id. */
  request(type, data, timeoutMs = 5000) {
    const id = `r-${++this.seq}`;
    this.send({ type, data, id });
    return this.next((m) => m && m.id === id, timeoutMs, `reply to ${type} (${id})`);
  }

  send(obj) {
    this.ws.send(typeof obj === "string" ? obj : JSON.stringify(obj));
  }

  /** Resolves with {code, reason} once the connection is closed. */
  waitClosed(timeoutMs = 5000) {
    return waitFor(() => this.closed, timeoutMs, "the connection to close");
  }

  close() {
    try {
      this.ws.close();
    } catch {}
  }
}

/** An HS256 JWT. */
export function jwt(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** A logger that keeps lines in memory (printed by tests on failure if wanted). */
export function memoryLogger() {
  const lines = [];
  const mk = (lvl) => (msg, meta) => lines.push(`${lvl} ${msg} ${meta ? JSON.stringify(meta) : ""}`);
  return { lines, debug: mk("debug"), info: mk("info"), warn: mk("warn"), error: mk("error") };
}
