// linkd-client: the client side of Linkd's WebSocket protocol, for browsers and
// Node.js. One file, no runtime dependency in browsers (Node < 22 loads the
// optional `ws` package when there is no global WebSocket).
//
// Protocol (JSON text frames on ws(s)://HOST<path>?token=<jwt>):
//   client -> linkd   {"type","data","id"?}        (no id: no reply)
//   reply             {"id","data"} | {"id","error":{"type","message","code"}}
//   push              {"type","data"[,"room","seq"]}
//   recovery          linkd.session {token,epoch,windowMs,history} after the upgrade;
//                     linkd.resume {token,rooms} as the first message after a reconnect;
//                     linkd.recovered {recovered,missed|reason} once the replay is done.

/** Where the connection is. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** A token, or a function giving one (called before every connect and reconnect). */
export type TokenSource = string | null | undefined | (() => string | null | undefined | Promise<string | null | undefined>);

export interface ReconnectOptions {
  /** First delay after a drop (default 500 ms). */
  initialDelayMs?: number;
  /** Cap of the exponential backoff (default 10 000 ms). */
  maxDelayMs?: number;
}

/** The subset of the WebSocket API the client uses (browsers' WebSocket, Node's global one, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (ev: any) => void): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ConnectOptions {
  /** JWT sent as `?token=` (browsers cannot set headers). A function is called before each (re)connect. */
  token?: TokenSource;
  /** Backoff between attempts; `false`: never reconnect (state "closed" after a drop). */
  reconnect?: ReconnectOptions | false;
  /** Default per-request timeout (default 15 000 ms); past it `request()` rejects with LOCAL_TIMEOUT. */
  requestTimeoutMs?: number;
  /** Resume the previous connection after a drop, where linkd offers it (default true). */
  recover?: boolean;
  /** Messages held while not connected (default 100); past it `request()` rejects with QUEUE_FULL and `send()` returns false. 0: fail at once with NOT_CONNECTED. */
  queueSize?: number;
  /** A connection attempt not open by then is abandoned and retried (default 10 000 ms). */
  connectTimeoutMs?: number;
  /** After a reconnect, how long to wait for linkd's `linkd.session` before giving up on resuming (default 2 000 ms). */
  sessionTimeoutMs?: number;
  /** A WebSocket implementation (default: the global one, else the `ws` package). */
  WebSocket?: WebSocketConstructor;
}

export interface RequestOptions {
  /** This request's timeout (default: the client's requestTimeoutMs). */
  timeoutMs?: number;
  /** Abort the wait (rejects with ABORTED; a reply that comes later is ignored). */
  signal?: AbortSignal;
}

/** What a push listener gets besides the data. */
export interface PushMeta {
  type: string;
  /** The room the push was sent to (recovery paths only). */
  room?: string;
  /** Its sequence number in that room (recovery paths only). */
  seq?: number;
  /** true: delivered by linkd's replay after a reconnect. */
  replayed?: boolean;
}

export interface OpenInfo {
  /** false for the first connection, true after a drop. */
  reconnected: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** false when close() was called or reconnecting is off. */
  willReconnect: boolean;
}

export interface RecoverInfo {
  /** true: linkd gave the rooms back and replayed every missed room push. */
  recovered: boolean;
  /** Pushes replayed (when recovered). */
  missed?: number;
  /** Why not (when not recovered): linkd's reason, or "unsupported" (linkd offered no session on this path), "disabled" (recover: false). */
  reason?: string;
}

/** The session linkd announced on this connection (recovery paths only). */
export interface SessionInfo {
  epoch: string;
  windowMs: number;
  history: number;
}

/**
 * A request that failed: linkd's or the service's error (`type`, `message`,
 * `code` as in the reply), or a local one with code 0: LOCAL_TIMEOUT,
 * DISCONNECTED (the connection dropped before the reply), QUEUE_FULL,
 * NOT_CONNECTED (queueSize 0), CLOSED (client.close()), ABORTED.
 */
export class LinkdError extends Error {
  readonly type: string;
  readonly code: number;
  readonly details?: unknown;
  constructor(type: string, message: string, code = 0, details?: unknown) {
    super(message);
    this.name = "LinkdError";
    this.type = type;
    this.code = code;
    if (details !== undefined) this.details = details;
  }
  /** true for the errors the client makes itself (code 0). */
  get local(): boolean {
    return this.code === 0;
  }
}

type PushListener = (data: any, meta: PushMeta) => void;

interface Pending {
  id: string;
  type: string;
  frame: string;
  resolve: (v: any) => void;
  reject: (e: LinkdError) => void;
  timer: ReturnType<typeof setTimeout> | null;
  sent: boolean;
  cleanup?: () => void;
}

interface Queued {
  frame: string;
  pending?: Pending;
}

const OPEN = 1;
const STABLE_MS = 1000; // a connection that lasted less does not reset the backoff

let wsImpl: Promise<WebSocketConstructor> | null = null;

/** The global WebSocket, else the `ws` package (Node without a global one). */
function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as any).WebSocket;
  if (typeof g === "function") return Promise.resolve(g);
  if (!wsImpl) {
    const name = "ws"; // not a static import: bundlers leave it alone, browsers never get here
    wsImpl = import(/* @vite-ignore */ /* webpackIgnore: true */ name).then(
      (m: any) => (m.WebSocket ?? m.default) as WebSocketConstructor,
      (err) => {
        wsImpl = null;
        throw new LinkdError("NO_WEBSOCKET", `no global WebSocket and the "ws" package could not be loaded (npm install ws): ${err?.message ?? err}`);
      },
    );
  }
  return wsImpl;
}

/** ws(s):// URL from ws(s)://, http(s):// or (in browsers) a path like "/ws/chat". */
function wsUrl(url: string | URL): URL {
  const loc = (globalThis as any).location;
  const u = new URL(String(url), loc && loc.href ? loc.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`linkd-client: not a WebSocket URL: ${url}`);
  return u;
}

function text(data: unknown): string | null {
  if (typeof data === "string") return data;
  return null; // binary frames are not part of the envelope protocol
}

export class LinkdClient {
  private readonly url: URL;
  private readonly opts: ConnectOptions;
  private readonly queueMax: number;
  private ws: WebSocketLike | null = null;
  private _state: ConnectionState = "connecting";
  private everOpen = false;
  private attempt = 0;
  private openedAt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private sessionTimer: ReturnType<typeof setTimeout> | null = null;
  private nextId = 0;
  private readonly pending = new Map<string, Pending>();
  private queue: Queued[] = [];
  private readonly listeners = new Map<string, Set<PushListener>>();
  private readonly hooks = {
    open: new Set<(i: OpenInfo) => void>(),
    close: new Set<(i: CloseInfo) => void>(),
    recover: new Set<(i: RecoverInfo) => void>(),
    state: new Set<(s: ConnectionState, prev: ConnectionState) => void>(),
    error: new Set<(e: LinkdError) => void>(),
  };
  // recovery
  private session: { token: string; epoch: string; windowMs: number; history: number } | null = null;
  /** The token and epoch to resume with after a drop: the last connection whose rooms are known. */
  private resumeFrom: { token: string; epoch: string } | null = null;
  private readonly seqs = new Map<string, number>();
  /** This connection: waiting for linkd.session before the resume, or for linkd.recovered after it. */
  private phase: "idle" | "await-session" | "await-recovered" = "idle";
  private replaying = false;
  private missedHere = 0;

  constructor(url: string | URL, opts: ConnectOptions = {}) {
    this.url = wsUrl(url);
    this.opts = opts;
    this.queueMax = Math.max(0, opts.queueSize ?? 100);
    void this.attemptConnect();
  }

  // --- public API --------------------------------------------------------------

  /** "connecting" (until the first open), "open", "reconnecting" (after a drop), "closed". */
  get state(): ConnectionState {
    return this._state;
  }

  /** The recovery session linkd announced on the current connection, or null. */
  get sessionInfo(): SessionInfo | null {
    return this.session ? { epoch: this.session.epoch, windowMs: this.session.windowMs, history: this.session.history } : null;
  }

  /** Per room, the highest sequence number delivered (recovery paths only). */
  positions(): Record<string, number> {
    return Object.fromEntries(this.seqs);
  }

  /** Messages waiting for a connection. */
  get queued(): number {
    return this.queue.length;
  }

  /**
   * Sends {type, data, id} and resolves with the reply's data. Rejects with a
   * LinkdError: the reply's error, or LOCAL_TIMEOUT, DISCONNECTED, QUEUE_FULL,
   * NOT_CONNECTED, CLOSED, ABORTED. While not connected the request waits in
   * the queue (its timeout runs meanwhile).
   */
  request<T = any>(type: string, data?: unknown, opts: RequestOptions = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this._state === "closed") return reject(new LinkdError("CLOSED", "the client is closed"));
      if (opts.signal?.aborted) return reject(new LinkdError("ABORTED", `${type}: aborted`));
      const id = "c" + ++this.nextId;
      const frame = JSON.stringify({ type, data: data === undefined ? null : data, id });
      const p: Pending = { id, type, frame, resolve, reject, timer: null, sent: false };
      if (this._state !== "open" && !this.enqueue({ frame, pending: p }, reject, type)) return;
      this.pending.set(id, p);
      const ms = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 15000;
      if (ms > 0 && Number.isFinite(ms)) {
        p.timer = setTimeout(() => {
          this.settle(id, new LinkdError("LOCAL_TIMEOUT", `${type}: no reply within ${ms} ms${p.sent ? "" : " (not connected)"}`));
        }, ms);
      }
      if (opts.signal) {
        const onAbort = () => this.settle(id, new LinkdError("ABORTED", `${type}: aborted`));
        opts.signal.addEventListener("abort", onAbort, { once: true });
        p.cleanup = () => opts.signal!.removeEventListener("abort", onAbort);
      }
      if (this._state === "open") this.transmit(p.frame, p);
    });
  }

  /**
   * Sends {type, data} with no id (no reply). While not connected it waits in
   * the queue. Returns false when it was dropped: queue full, not connected
   * with queueSize 0, or the client is closed.
   */
  send(type: string, data?: unknown): boolean {
    if (this._state === "closed") return false;
    const frame = JSON.stringify({ type, data: data === undefined ? null : data });
    if (this._state === "open") return this.transmit(frame);
    return this.enqueue({ frame }, null, type);
  }

  /** Listens to pushes of one type ("*": every push). Returns a function that removes the listener. */
  on<T = any>(type: string, fn: (data: T, meta: PushMeta) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn as PushListener);
    return () => this.off(type, fn);
  }

  off(type: string, fn: (data: any, meta: PushMeta) => void): void {
    const set = this.listeners.get(type);
    if (set && set.delete(fn as PushListener) && set.size === 0) this.listeners.delete(type);
  }

  /** The connection is open and usable (after the resume was sent, on a reconnect). */
  onOpen(fn: (info: OpenInfo) => void): () => void {
    return this.hook("open", fn);
  }
  /** A connection closed (dropped, closed by linkd or the service, or by close()). */
  onClose(fn: (info: CloseInfo) => void): () => void {
    return this.hook("close", fn);
  }
  /** After every reconnect, once: {recovered: true, missed} or {recovered: false, reason} (refetch then). */
  onRecover(fn: (info: RecoverInfo) => void): () => void {
    return this.hook("recover", fn);
  }
  /** Every change of `state`. */
  onStateChange(fn: (state: ConnectionState, prev: ConnectionState) => void): () => void {
    return this.hook("state", fn);
  }
  /** Errors that belong to no request: linkd's answers without an id, a failing token function, a throwing listener. */
  onError(fn: (err: LinkdError) => void): () => void {
    return this.hook("error", fn);
  }

  /** Resolves when the client is open (at once if it is); rejects if it is closed first or after timeoutMs. */
  ready(timeoutMs?: number): Promise<void> {
    if (this._state === "open") return Promise.resolve();
    if (this._state === "closed") return Promise.reject(new LinkdError("CLOSED", "the client is closed"));
    return new Promise<void>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      const off = this.onStateChange((s) => {
        if (s !== "open" && s !== "closed") return;
        off();
        if (timer) clearTimeout(timer);
        if (s === "open") resolve();
        else reject(new LinkdError("CLOSED", "the client is closed"));
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          off();
          reject(new LinkdError("LOCAL_TIMEOUT", `not open within ${timeoutMs} ms`));
        }, timeoutMs);
      }
    });
  }

  /** Closes the connection for good: no reconnect; waiting and queued requests reject with CLOSED. */
  close(code = 1000, reason = ""): void {
    if (this._state === "closed") return;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    this.failAll(new LinkdError("CLOSED", "the client was closed"), true);
    this.setState("closed");
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
      this.emit("close", { code, reason, willReconnect: false });
    }
  }

  // --- connecting --------------------------------------------------------------

  private async attemptConnect(): Promise<void> {
    this.retryTimer = null;
    if (this.isClosed()) return;
    let Ctor: WebSocketConstructor;
    let token: string | null | undefined;
    try {
      Ctor = this.opts.WebSocket ?? (await defaultWebSocket());
      const t = this.opts.token;
      token = typeof t === "function" ? await t() : t;
    } catch (err: any) {
      if (this.isClosed()) return;
      const e = err instanceof LinkdError ? err : new LinkdError("TOKEN_ERROR", `token function failed: ${err?.message ?? err}`);
      this.reportError(e);
      if (e.type === "NO_WEBSOCKET") return this.close();
      return this.scheduleRetry();
    }
    if (this.isClosed()) return; // close() was called while the token was fetched
    const u = new URL(this.url.href);
    if (token) u.searchParams.set("token", token);
    let ws: WebSocketLike;
    try {
      ws = new Ctor(u.href);
    } catch (err: any) {
      this.reportError(new LinkdError("CONNECT_ERROR", `WebSocket: ${err?.message ?? err}`));
      return this.scheduleRetry();
    }
    this.ws = ws;
    try {
      ws.binaryType = "arraybuffer";
    } catch {
      /* not settable */
    }
    this.connectTimer = setTimeout(() => {
      if (this.ws !== ws) return;
      this.ws = null;
      try {
        ws.close();
      } catch {
        /* ignore */
      }
      this.scheduleRetry();
    }, this.opts.connectTimeoutMs ?? 10000);
    ws.addEventListener("open", () => {
      if (this.ws === ws) this.onSocketOpen();
    });
    ws.addEventListener("message", (ev: any) => {
      if (this.ws === ws) this.onFrame(ev.data);
    });
    ws.addEventListener("close", (ev: any) => {
      if (this.ws === ws) this.onSocketClose(ev?.code ?? 1006, String(ev?.reason ?? ""));
    });
    ws.addEventListener("error", () => {
      /* a close event follows */
    });
  }

  private onSocketOpen(): void {
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    this.openedAt = Date.now();
    this.session = null;
    this.missedHere = 0;
    if (!this.everOpen) {
      this.phase = "idle";
      return this.becomeOpen();
    }
    if (this.opts.recover === false) {
      this.phase = "idle";
      this.becomeOpen();
      return this.recovered({ recovered: false, reason: "disabled" });
    }
    if (!this.resumeFrom) {
      this.phase = "idle";
      this.becomeOpen();
      return this.recovered({ recovered: false, reason: "unsupported" }); // the previous connection had no session
    }
    // the resume must be the first message: wait for this connection's linkd.session
    this.phase = "await-session";
    this.sessionTimer = setTimeout(() => this.noSession(), this.opts.sessionTimeoutMs ?? 2000);
  }

  /** linkd sent no linkd.session on this connection: the path (now) has no recovery. */
  private noSession(): void {
    if (this.sessionTimer) clearTimeout(this.sessionTimer);
    this.sessionTimer = null;
    this.phase = "idle";
    this.resumeFrom = null;
    this.seqs.clear();
    this.becomeOpen();
    this.recovered({ recovered: false, reason: "unsupported" });
  }

  private becomeOpen(): void {
    const reconnected = this.everOpen;
    this.everOpen = true;
    this.setState("open");
    if (this._state !== "open") return; // a listener closed it
    this.flush();
    this.emit("open", { reconnected });
  }

  private recovered(info: RecoverInfo): void {
    this.emit("recover", info);
  }

  private onSocketClose(code: number, reason: string): void {
    const wasOpen = this.openedAt > 0;
    this.ws = null;
    this.clearTimers();
    // The next resume names this connection's session, unless this connection
    // was itself still resuming: then the previous token still names the rooms.
    if (wasOpen && this.phase === "idle") {
      this.resumeFrom = this.session ? { token: this.session.token, epoch: this.session.epoch } : null;
    }
    this.phase = "idle";
    this.replaying = false;
    this.session = null;
    if (wasOpen && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    this.openedAt = 0;
    this.failAll(new LinkdError("DISCONNECTED", "the connection dropped before the reply"), false);
    const willReconnect = this.opts.reconnect !== false;
    if (wasOpen) this.emit("close", { code, reason, willReconnect });
    if (this._state === "closed") return; // closed by an onClose listener
    if (!willReconnect) {
      this.failAll(new LinkdError("CLOSED", "the connection closed and reconnecting is off"), true);
      this.setState("closed");
      return;
    }
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this._state === "closed") return;
    if (this.opts.reconnect === false) {
      this.failAll(new LinkdError("CLOSED", "could not connect and reconnecting is off"), true);
      this.setState("closed");
      return;
    }
    this.setState(this.everOpen ? "reconnecting" : "connecting");
    const r = this.opts.reconnect || {};
    const initial = Math.max(1, r.initialDelayMs ?? 500);
    const max = Math.max(initial, r.maxDelayMs ?? 10000);
    const full = Math.min(max, initial * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    const wait = Math.round(full / 2 + (Math.random() * full) / 2); // "equal jitter": half fixed, half random
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.attemptConnect(), wait);
  }

  // --- frames --------------------------------------------------------------------

  private onFrame(raw: unknown): void {
    const s = text(raw);
    if (s === null) return;
    let msg: any;
    try {
      msg = JSON.parse(s);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;

    if (this.phase === "await-session") {
      if (msg.type === "linkd.session") {
        this.takeSession(msg.data);
        return this.resume();
      }
      // linkd sends linkd.session before anything else: none came, so no recovery here
      this.noSession();
    }
    if (msg.type === "linkd.session" && msg.id === undefined) return this.takeSession(msg.data);
    if (msg.type === "linkd.recovered" && msg.id === undefined) return this.onRecovered(msg.data);

    if (msg.id !== undefined && msg.id !== null && msg.type === undefined) {
      const p = this.pending.get(String(msg.id));
      if (!p) return; // timed out or aborted already
      if (msg.error) {
        const e = msg.error;
        this.settle(p.id, new LinkdError(String(e.type ?? "ERROR"), String(e.message ?? e.type ?? "error"), Number(e.code) || 0, e.details));
      } else {
        this.settle(p.id, undefined, msg.data === undefined ? null : msg.data);
      }
      return;
    }
    if (msg.error && msg.type === undefined) {
      const e = msg.error;
      return this.reportError(new LinkdError(String(e.type ?? "ERROR"), String(e.message ?? ""), Number(e.code) || 0, e.details));
    }
    if (typeof msg.type !== "string") return;
    const meta: PushMeta = { type: msg.type };
    if (typeof msg.room === "string") meta.room = msg.room;
    if (typeof msg.seq === "number") {
      meta.seq = msg.seq;
      if (meta.room !== undefined) {
        const last = this.seqs.get(meta.room);
        if (last !== undefined && msg.seq <= last) return; // delivered already (replay overlap)
        this.seqs.set(meta.room, msg.seq);
      }
    }
    if (this.replaying) {
      meta.replayed = true;
      this.missedHere++;
    }
    this.deliver(msg.type, msg.data === undefined ? null : msg.data, meta);
  }

  private takeSession(d: any): void {
    if (!d || typeof d.token !== "string") return;
    this.session = {
      token: d.token,
      epoch: String(d.epoch ?? ""),
      windowMs: Number(d.windowMs) || 0,
      history: Number(d.history) || 0,
    };
  }

  /** First message on a new connection: the previous connection's token and where each room was. */
  private resume(): void {
    if (this.sessionTimer) clearTimeout(this.sessionTimer);
    this.sessionTimer = null;
    const from = this.resumeFrom!;
    const rooms = Object.fromEntries(this.seqs);
    if (this.session && from.epoch !== this.session.epoch) this.seqs.clear(); // new numbering: old positions mean nothing
    this.phase = "await-recovered";
    this.replaying = true;
    this.transmit(JSON.stringify({ type: "linkd.resume", data: { token: from.token, rooms } }));
    this.becomeOpen();
  }

  private onRecovered(d: any): void {
    if (this.phase !== "await-recovered") return;
    this.phase = "idle";
    this.replaying = false;
    const ok = !!d?.recovered;
    if (!ok) this.seqs.clear(); // no rooms restored: the application joins again, positions start over
    const info: RecoverInfo = ok
      ? { recovered: true, missed: typeof d.missed === "number" ? d.missed : this.missedHere }
      : { recovered: false, reason: String(d?.reason ?? "refused") };
    this.recovered(info);
  }

  private deliver(type: string, data: unknown, meta: PushMeta): void {
    for (const key of [type, "*"]) {
      const set = this.listeners.get(key);
      if (!set) continue;
      for (const fn of [...set]) {
        try {
          fn(data, meta);
        } catch (err: any) {
          this.reportError(new LinkdError("LISTENER_ERROR", `listener for ${type} threw: ${err?.message ?? err}`, 0, err));
        }
      }
    }
  }

  // --- sending and settling ------------------------------------------------------

  private transmit(frame: string, p?: Pending): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) {
      if (p) this.settle(p.id, new LinkdError("DISCONNECTED", `${p.type}: not connected`));
      return false;
    }
    try {
      ws.send(frame);
    } catch (err: any) {
      if (p) this.settle(p.id, new LinkdError("DISCONNECTED", `${p.type}: send failed: ${err?.message ?? err}`));
      return false;
    }
    if (p) p.sent = true;
    return true;
  }

  /** Holds a message until the connection opens; false (and a rejection) when it cannot. */
  private enqueue(q: Queued, reject: ((e: LinkdError) => void) | null, type: string): boolean {
    if (this.queueMax === 0) {
      reject?.(new LinkdError("NOT_CONNECTED", `${type}: not connected (queueSize is 0)`));
      return false;
    }
    if (this.queue.length >= this.queueMax) {
      reject?.(new LinkdError("QUEUE_FULL", `${type}: not connected and ${this.queueMax} messages already wait`));
      return false;
    }
    this.queue.push(q);
    return true;
  }

  private flush(): void {
    const q = this.queue;
    this.queue = [];
    for (const item of q) {
      if (item.pending) {
        if (!this.pending.has(item.pending.id)) continue; // timed out or aborted while waiting
        this.transmit(item.pending.frame, item.pending);
      } else {
        this.transmit(item.frame);
      }
    }
  }

  private settle(id: string, err?: LinkdError, value?: unknown): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.cleanup?.();
    if (err) {
      this.queue = this.queue.filter((q) => q.pending !== p);
      p.reject(err);
    } else {
      p.resolve(value);
    }
  }

  /** Rejects the requests sent on the lost connection; with `queued`, also those still waiting. */
  private failAll(err: LinkdError, queued: boolean): void {
    for (const p of [...this.pending.values()]) {
      if (p.sent || queued) this.settle(p.id, new LinkdError(err.type, `${p.type}: ${err.message}`, err.code));
    }
    if (queued) this.queue = [];
  }

  // --- plumbing ------------------------------------------------------------------

  /** (a method, so TypeScript does not narrow the state across awaits and callbacks) */
  private isClosed(): boolean {
    return this._state === "closed";
  }

  private clearTimers(): void {
    for (const t of [this.retryTimer, this.connectTimer, this.sessionTimer]) if (t) clearTimeout(t);
    this.retryTimer = this.connectTimer = this.sessionTimer = null;
  }

  private setState(s: ConnectionState): void {
    const prev = this._state;
    if (prev === s) return;
    this._state = s;
    this.emit("state", s, prev);
  }

  private hook<K extends keyof LinkdClient["hooks"]>(k: K, fn: any): () => void {
    (this.hooks[k] as Set<any>).add(fn);
    return () => (this.hooks[k] as Set<any>).delete(fn);
  }

  private emit(k: keyof LinkdClient["hooks"], ...args: any[]): void {
    for (const fn of [...(this.hooks[k] as Set<any>)]) {
      try {
        fn(...args);
      } catch (err: any) {
        if (k === "error") continue;
        this.reportError(new LinkdError("LISTENER_ERROR", `${k} listener threw: ${err?.message ?? err}`, 0, err));
      }
    }
  }

  private reportError(e: LinkdError): void {
    if (this.hooks.error.size) this.emit("error", e);
    else if (typeof console !== "undefined") console.warn(`linkd-client: ${e.type}: ${e.message}`);
  }
}

/** Opens a client (it connects at once and keeps reconnecting until close()). */
export function connect(url: string | URL, opts: ConnectOptions = {}): LinkdClient {
  return new LinkdClient(url, opts);
}

export default connect;
