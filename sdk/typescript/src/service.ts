// The service: one link to linkd's Unix socket (register, reconnect with
// backoff, commands with op_id), and the HTTP half (actions).
import { EventEmitter } from "events";
import * as net from "net";
import {
  BadRequestError,
  ForbiddenError,
  LinkdError,
  NotFoundError,
  ServiceUnavailableError,
  TimeoutError,
  UnauthorizedError,
  errorResponse,
  toLinkdError,
} from "./errors";
import { FrameReader, FrameWriter, decodeMessage, encodeFrame } from "./proto";
import type { ActionOptions, AuthContext, Logger, ServiceOptions } from "./types";
import { Link, RoomCount, WebSocketApi, authFromProto, describe } from "./ws";

/** Default of ServiceOptions.maxFrameBytes: the largest frame read from linkd, declared at registration. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;

/**
 * Largest frame read before linkd has answered the registration. Until then
 * linkd sends only small frames (RegisterResult, an error), so a bigger one
 * is not worth buffering.
 */
const PRE_REGISTER_MAX_FRAME = 1024 * 1024;

/** linkd's smallest --max-frame-size; a service reading less could not take a registration answer. */
const MIN_MAX_FRAME_BYTES = 1024;
/** Frames queued in one event-loop turn are written at once past this many bytes. */
const MAX_BATCH = 1024 * 1024;

export function defaultSocketPath(): string {
  if (process.env.LINKD_SOCKET) return process.env.LINKD_SOCKET;
  if (typeof process.getuid === "function" && process.getuid() === 0) return "/run/linkd/linkd.sock";
  return "./run/linkd.sock";
}

const LEVELS: Record<string, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

/** A logger writing one line per event to stderr; level from $LINKD_SDK_LOG (default info). */
export function consoleLogger(name: string, level = process.env.LINKD_SDK_LOG || "info"): Logger {
  const min = LEVELS[level] ?? 20;
  const out = (lvl: string) => (msg: string, meta?: Record<string, unknown>) => {
    if ((LEVELS[lvl] ?? 0) < min) return;
    const extra = meta && Object.keys(meta).length ? " " + JSON.stringify(meta) : "";
    process.stderr.write(`${new Date().toISOString()} ${lvl} [${name}] ${msg}${extra}\n`);
  };
  return { debug: out("debug"), info: out("info"), warn: out("warn"), error: out("error") };
}

/** A logger that says nothing. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** What an HTTP action handler gets. */
export interface HttpContext {
  requestId: string;
  method: string;
  path: string;
  /** The route pattern that matched, e.g. "/users/:id". */
  route: string;
  params: Record<string, string>;
  /** Query parameters (the last value wins when a name repeats; see searchParams for all). */
  query: Record<string, string>;
  searchParams: URLSearchParams;
  /** Header names in lower case; repeated headers joined with ", ". */
  headers: Record<string, string>;
  /** The body: parsed JSON (application/json), a string (text/*), an object (form), else a Buffer; undefined if empty. */
  readonly body: any;
  rawBody: Buffer;
  user: AuthContext;
  /** Same as user. */
  auth: AuthContext;
  remoteAddress: string;
  logger: Logger;
  /** Sets the status of a successful answer (default 200). */
  setStatus(status: number): void;
  setHeader(name: string, value: string): void;
}

export type ActionHandler = (ctx: HttpContext) => unknown | Promise<unknown>;

/** A complete HTTP answer, for bodies that are not JSON (HTML, files...). */
export class HttpReply {
  constructor(
    readonly body: string | Buffer,
    readonly status = 200,
    readonly headers: Record<string, string> = {},
  ) {}
}

/** Builds an HttpReply: `return reply(html, { contentType: "text/html; charset=utf-8" })`. */
export function reply(
  body: string | Buffer,
  init: { status?: number; contentType?: string; headers?: Record<string, string> } = {},
): HttpReply {
  const headers: Record<string, string> = { ...(init.headers ?? {}) };
  if (init.contentType) headers["content-type"] = init.contentType;
  else if (!Object.keys(headers).some((k) => k.toLowerCase() === "content-type")) {
    headers["content-type"] = typeof body === "string" ? "text/plain; charset=utf-8" : "application/octet-stream";
  }
  return new HttpReply(body, init.status ?? 200, headers);
}

interface Action {
  name: string;
  method: string;
  route: string;
  opts: ActionOptions;
  handler: ActionHandler;
}

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A Linkd service. Events: "registered" (RegisterResult ok), "disconnected"
 * (the link went away; it will reconnect), "refused" (reason).
 */
export class Service extends EventEmitter implements Link {
  readonly name: string;
  readonly logger: Logger;
  readonly ws: WebSocketApi;
  readonly socketPath: string;

  private readonly opts: ServiceOptions;
  private readonly actions = new Map<string, Action>();
  private sock: net.Socket | null = null;
  private reader: FrameReader;
  /** Frames sent during this event-loop turn: written together, once, by flush(). */
  private readonly out = new FrameWriter();
  private flushScheduled = false;
  private readonly flushBound = () => this.flush();
  private registered = false;
  private running = false;
  private everRegistered = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private delay: number;
  /** The largest frame this service reads (ServiceOptions.maxFrameBytes), sent as max_inbound_frame_bytes. */
  readonly maxFrameBytes: number;
  /**
   * Connection errors (ENOENT...) already logged since the link was last up:
   * each is said once, then retries are quiet.
   */
  private readonly connectErrorsSaid = new Set<string>();
  private seq = 0;
  private readonly pending = new Map<string, Pending>();
  private startWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  /** linkd's version, from RegisterResult. */
  linkdVersion = "";

  constructor(opts: ServiceOptions) {
    super();
    if (!opts || !opts.name) throw new TypeError("createService: name is required");
    this.opts = opts;
    this.name = opts.name;
    this.socketPath = opts.socketPath || defaultSocketPath();
    this.logger = opts.logger ?? consoleLogger(opts.name);
    this.ws = new WebSocketApi(this, !!opts.websocket?.raw);
    const max = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    if (!Number.isInteger(max) || max < MIN_MAX_FRAME_BYTES || max > 0xffffffff) {
      throw new TypeError(`createService: maxFrameBytes must be an integer from ${MIN_MAX_FRAME_BYTES} to 4294967295`);
    }
    this.maxFrameBytes = max;
    this.reader = new FrameReader(
      Math.min(max, PRE_REGISTER_MAX_FRAME),
      (body) => this.onFrame(body),
      (length) => this.onFrameSkipped(length),
    );
    this.delay = opts.reconnect?.initialDelayMs ?? 100;
    // an EventEmitter "error" without listeners would throw: we never emit it
  }

  /** True while registered with linkd. */
  get connected(): boolean {
    return this.registered;
  }

  // --- HTTP actions ---------------------------------------------------------

  action(name: string, opts: ActionOptions, handler: ActionHandler): this {
    if (!opts || typeof opts.route !== "string" || !opts.route.startsWith("/")) {
      throw new TypeError(`action "${name}": route must be a path starting with "/"`);
    }
    if (typeof handler !== "function") throw new TypeError(`action "${name}": handler must be a function`);
    const method = (opts.method ?? "GET").toUpperCase();
    const key = `${method} ${opts.route}`;
    if (this.actions.has(key)) throw new Error(`action "${name}": ${key} is already registered`);
    this.actions.set(key, { name, method, route: opts.route, opts, handler });
    if (this.registered) this.logger.warn(`action "${name}" added after registration: it takes effect at the next reconnect`);
    return this;
  }

  // --- lifecycle ------------------------------------------------------------

  /**
   * Connects and registers. Resolves at the first successful registration;
   * keeps retrying (with backoff) while linkd's socket is not there; rejects
   * if linkd refuses the registration.
   */
  start(): Promise<void> {
    if (this.registered) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.startWaiters.push({ resolve, reject }));
    if (!this.running) {
      this.running = true;
      this.connect();
    }
    return p;
  }

  /** Closes the link and stops reconnecting. */
  stop(): Promise<void> {
    this.running = false;
    if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    this.settleStart(new ServiceUnavailableError("service stopped"));
    this.flush();   // what handlers sent in this turn goes out before the link closes
    const sock = this.sock;
    if (!sock || sock.destroyed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      sock.once("close", () => resolve());
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    });
  }

  private settleStart(err?: Error): void {
    const waiters = this.startWaiters;
    this.startWaiters = [];
    for (const w of waiters) (err ? w.reject(err) : w.resolve());
  }

  private connect(): void {
    this.reconnectTimer = null;
    if (!this.running) return;
    const sock = net.createConnection(this.socketPath);
    this.sock = sock;
    this.out.clear();
    this.reader.reset();
    this.reader.maxFrame = Math.min(this.maxFrameBytes, PRE_REGISTER_MAX_FRAME);
    let opened = false;
    sock.on("connect", () => {
      opened = true;
      // after "waiting for linkd's socket" the user wants to hear that the wait is over
      if (this.connectErrorsSaid.size) this.logger.info(`connected to linkd at ${this.socketPath}`);
      else this.logger.debug("connected to linkd", { socket: this.socketPath });
      this.connectErrorsSaid.clear();
      try {
        sock.write(encodeFrame({ registerService: this.registration() }));
      } catch (err) {
        this.logger.error("could not encode the registration", { error: describe(err) });
        sock.destroy();
      }
    });
    sock.on("data", (chunk: Buffer) => {
      try {
        this.reader.push(chunk);
      } catch (err) {
        // only a broken length prefix throws: the stream cannot be resynchronised; drop the link, reconnect
        this.logger.warn("bad frame length from linkd, dropping the link", { error: (err as Error).message });
        sock.destroy();
      }
    });
    sock.on("error", (err: NodeJS.ErrnoException) => {
      if (opened) {
        this.logger.warn("link error", { error: err.message });
        return;
      }
      // connecting fails again every few seconds for as long as linkd is away: say each reason once
      const code = err.code ?? err.message;
      const first = !this.connectErrorsSaid.has(code);
      this.connectErrorsSaid.add(code);
      if (!first) this.logger.debug("linkd not reachable", { code });
      else if (err.code === "ENOENT" || err.code === "ECONNREFUSED") this.logger.info(`waiting for linkd's socket at ${this.socketPath}`, { code });
      else this.logger.warn(`cannot connect to linkd's socket at ${this.socketPath}; retrying`, { error: err.message });
    });
    sock.on("close", () => this.onClose(sock));
  }

  private onClose(sock: net.Socket): void {
    if (this.sock !== sock) return;
    this.sock = null;
    this.out.clear();
    const wasRegistered = this.registered;
    this.registered = false;
    const lost = new ServiceUnavailableError("link to linkd lost");
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(lost);
      this.pending.delete(id);
    }
    if (wasRegistered) {
      if (this.running) this.logger.warn("link to linkd closed; reconnecting");
      this.emit("disconnected");
    }
    if (!this.running) return;
    const max = this.opts.reconnect?.maxDelayMs ?? 5000;
    const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
    this.delay = Math.min(this.delay * 2, max);
    this.reconnectTimer = setTimeout(() => this.connect(), wait);
  }

  private registration(): Record<string, unknown> {
    const ws = this.opts.websocket;
    return {
      name: this.opts.name,
      version: this.opts.version ?? "",
      // the proto field is namespace_name ("namespace" is a C++ keyword); both
      // spellings are given, protobufjs uses the one the loaded proto has
      namespaceName: this.opts.namespace ?? "",
      namespace: this.opts.namespace ?? "",
      instanceId: this.opts.instanceId ?? "",
      routes: [...this.actions.values()].map((a) => ({
        method: a.method,
        path: a.route,
        auth: !!a.opts.auth,
        roles: a.opts.roles ?? [],
        corsOrigins: a.opts.cors ?? [],
      })),
      websocket:
        ws && ws.enabled !== false && ws.path
          ? {
              enabled: true,
              path: ws.path,
              heartbeatIntervalMs: ws.heartbeatIntervalMs ?? 0,
              maxConnectionsPerUser: ws.maxConnectionsPerUser ?? 0,
              maxMessageSizeBytes: ws.maxMessageSizeBytes ?? 0,
              compression: !!ws.compression,
              authRequired: !!ws.authRequired,
              raw: !!ws.raw,
              recovery: ws.recovery ? { windowMs: ws.recovery.windowMs, history: ws.recovery.history } : undefined,
            }
          : { enabled: false },
      // linkd never sends more than this: a bigger request gets 413, a bigger message 1009
      maxInboundFrameBytes: this.maxFrameBytes,
    };
  }

  // --- frames from linkd -----------------------------------------------------

  private onFrameSkipped(length: number): void {
    // a linkd that does not honour max_inbound_frame_bytes (or a bug): the
    // frame's work is lost, not the link's
    this.logger.warn("frame from linkd over the size limit skipped", { bytes: length, maxFrameBytes: this.reader.maxFrame });
  }

  private onFrame(body: Buffer): void {
    let frame;
    try {
      frame = decodeMessage(body);
    } catch (err) {
      this.logger.warn("undecodable frame from linkd ignored", { bytes: body.length, error: (err as Error).message });
      return;
    }
    try {
      // the hot path first: a client message, straight to its handler
      if (frame.wsInbound != null) this.ws.handleInboundFast(frame.wsInbound);
      else this.dispatch(frame);
    } catch (err) {
      this.logger.error("frame handling failed", { kind: frame.message, error: describe(err) });
    }
  }

  /** Frames other than client messages (decoded message objects: unset fields read their defaults). */
  private dispatch(f: any): void {
    switch (f.message) {
      case "registerResult":
        return this.onRegisterResult(f.registerResult);
      case "httpRequest":
        void this.onHttpRequest(f.httpRequest);
        return;
      case "heartbeat":
        if (!f.heartbeat.reply) this.trySend({ heartbeat: { timestampMs: Date.now(), reply: true } });
        return;
      case "commandResult":
        return this.settle(`op:${f.commandResult.opId}`, f.commandResult.ok, f.commandResult.error, undefined);
      case "roomsResult": {
        const r = f.roomsResult;
        return this.settle(`q:${r.queryId}`, !r.error, r.error, r.rooms);
      }
      case "roomCountResult": {
        const r = f.roomCountResult;
        return this.settle(`c:${r.queryId}`, true, undefined, { members: r.members, nodes: r.nodes, nodesKnown: r.nodesKnown });
      }
      case "error":
        this.logger.warn("linkd refused a frame", { type: f.error.type, message: f.error.message });
        return;
      case "wsConnectionEvent":
        this.ws.handleConnectionEvent(f.wsConnectionEvent).catch((err) => this.logger.error("connection event failed", { error: describe(err) }));
        return;
      default:
        this.logger.debug("frame ignored", { kind: f.message ?? "(empty)" });
    }
  }

  private onRegisterResult(r: any): void {
    if (!r.ok) {
      const reason = r.reason || "registration refused";
      this.logger.error("linkd refused the registration", { reason });
      this.emit("refused", reason);
      if (!this.everRegistered) {
        // a configuration problem: stop, and let start() fail
        this.running = false;
        this.settleStart(new LinkdError(409, "REGISTRATION_REFUSED", reason));
      }
      this.sock?.destroy();
      return;
    }
    this.registered = true;
    this.everRegistered = true;
    this.delay = this.opts.reconnect?.initialDelayMs ?? 100;
    this.linkdVersion = r.linkdVersion ?? "";
    if (r.maxFrameBytes > 0) this.maxSendFrame = r.maxFrameBytes;
    // what we declared is what linkd may now send us; it applies from the next frame on
    this.reader.maxFrame = this.maxFrameBytes;
    if (this.maxSendFrame > this.maxFrameBytes && !this.frameLimitSaid) {
      this.frameLimitSaid = true;
      this.logger.info("linkd's frame limit is above this service's maxFrameBytes: bigger requests and messages are refused by linkd", {
        linkdMaxFrameBytes: this.maxSendFrame,
        maxFrameBytes: this.maxFrameBytes,
      });
    }
    this.ws.resetSockets();
    this.logger.info("registered with linkd", { socket: this.socketPath, linkd: this.linkdVersion });
    this.settleStart();
    this.emit("registered");
  }

  /** Largest frame linkd accepts from us (RegisterResult.max_frame_bytes). */
  private maxSendFrame = 0;
  private frameLimitSaid = false;

  private settle(key: string, ok: boolean, error: any, value: unknown): void {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    clearTimeout(p.timer);
    if (ok) p.resolve(value);
    else p.reject(new LinkdError(error?.code || 400, error?.type || "COMMAND_FAILED", error?.message || "linkd refused the command"));
  }

  // --- Link (used by service.ws) ---------------------------------------------

  /**
   * Queues one frame (a plain object with the generated classes' field
   * names and types, e.g. {wsResponse: {connectionId, correlationId, data}})
   * for this event-loop turn's write: every frame sent while handling what
   * one read brought goes out in one socket write, as linkd batches its
   * writes to services.
   */
  send(frame: Record<string, unknown>): void {
    if (!this.registered || !this.sock) throw new ServiceUnavailableError();
    if (this.out.append(frame, this.maxSendFrame) < 0) {
      throw new LinkdError(413, "PAYLOAD_TOO_LARGE", `frame exceeds linkd's limit of ${this.maxSendFrame} bytes`);
    }
    if (this.out.length >= MAX_BATCH) this.flush();   // a handler pushing in a loop: write as it goes
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushBound);
    }
  }

  /** Writes the frames queued during this turn, in one write. */
  private flush(): void {
    this.flushScheduled = false;
    const bytes = this.out.take();
    const sock = this.sock;
    if (bytes && sock && !sock.destroyed && !sock.writableEnded) sock.write(bytes);
  }

  private trySend(frame: Record<string, unknown>): void {
    try {
      this.send(frame);
    } catch (err) {
      this.logger.debug("frame not sent", { error: (err as Error).message });
    }
  }

  private wait<T>(key: string, what: string, minMs = 0): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const ms = Math.max(this.opts.commandTimeoutMs ?? 10000, minMs);
      const timer = setTimeout(() => {
        this.pending.delete(key);
        reject(new TimeoutError(`no answer from linkd to ${what} within ${ms} ms`));
      }, ms);
      this.pending.set(key, { resolve, reject, timer });
    });
  }

  command(kind: string, body: Record<string, unknown>): Promise<void> {
    const opId = ++this.seq;
    try {
      this.send({ [kind]: { ...body, opId } });
    } catch (err) {
      return Promise.reject(err);
    }
    return this.wait<void>(`op:${opId}`, kind);
  }

  queryRooms(connectionId: string): Promise<string[]> {
    const queryId = ++this.seq;
    try {
      this.send({ roomsQuery: { queryId, connectionId } });
    } catch (err) {
      return Promise.reject(err);
    }
    return this.wait<string[]>(`q:${queryId}`, "roomsQuery");
  }

  queryRoomCount(room: string, timeoutMs: number): Promise<RoomCount> {
    const queryId = ++this.seq;
    try {
      this.send({ roomCountQuery: { queryId, room, timeoutMs } });
    } catch (err) {
      return Promise.reject(err);
    }
    return this.wait<RoomCount>(`c:${queryId}`, "roomCountQuery", timeoutMs + 1000);   // linkd answers within timeoutMs
  }

  // --- HTTP requests -----------------------------------------------------------

  private findAction(method: string, route: string): Action | undefined {
    return this.actions.get(`${method} ${route}`) ?? this.actions.get(`* ${route}`);
  }

  private async onHttpRequest(req: any): Promise<void> {
    const requestId = String(req.requestId ?? "0");
    let status = 200;
    const headers: Record<string, string> = {};
    let body: Buffer;
    try {
      const action = this.findAction(String(req.method ?? "").toUpperCase(), req.route ?? "");
      const ctx = this.httpContext(req, requestId, (s) => (status = s), (n, v) => (headers[n.toLowerCase()] = v));
      if (!action) throw new NotFoundError(`no action for ${req.method} ${req.route || req.path}`);
      if ((action.opts.auth || action.opts.roles?.length) && !ctx.user.authenticated) throw new UnauthorizedError();
      const roles = action.opts.roles;
      if (roles && roles.length && !roles.some((r) => ctx.user.roles.includes(r))) {
        throw new ForbiddenError(`one of the roles ${roles.join(", ")} is required`);
      }
      const result = await action.handler(ctx);
      if (result instanceof HttpReply) {
        status = result.status;
        for (const [n, v] of Object.entries(result.headers)) headers[n.toLowerCase()] = v;
        body = Buffer.isBuffer(result.body) ? result.body : Buffer.from(result.body, "utf8");
      } else {
        const text = JSON.stringify(result === undefined ? null : result) ?? "null";
        body = Buffer.from(text, "utf8");
        if (!headers["content-type"]) headers["content-type"] = "application/json";
      }
    } catch (err) {
      const e = toLinkdError(err);
      if (e.type === "INTERNAL_ERROR") this.logger.error("action failed", { path: req.path, error: describe(err) });
      status = e.status;
      for (const k of Object.keys(headers)) delete headers[k];
      headers["content-type"] = "application/json";
      const er = errorResponse(e);
      const payload: Record<string, unknown> = { type: er.type, message: er.message };
      if (e.details !== undefined) payload.details = e.details;
      body = Buffer.from(JSON.stringify({ error: payload }), "utf8");
    }
    try {
      this.send({
        httpResponse: {
          requestId,
          status,
          headers: Object.entries(headers).map(([name, value]) => ({ name, value })),
          body,
        },
      });
    } catch (err) {
      if (!(err instanceof LinkdError && err.type === "PAYLOAD_TOO_LARGE")) {
        this.logger.debug("frame not sent", { error: (err as Error).message });
        return;
      }
      // the client would otherwise wait for linkd's timeout: tell it now
      this.logger.error("HTTP response over linkd's frame limit: answered 500", { path: req.path, bytes: body.length });
      this.trySend({
        httpResponse: {
          requestId,
          status: 500,
          headers: [{ name: "content-type", value: "application/json" }],
          body: Buffer.from(JSON.stringify({ error: { type: "RESPONSE_TOO_LARGE", message: "the response is too large" } }), "utf8"),
        },
      });
    }
  }

  private httpContext(
    req: any,
    requestId: string,
    setStatus: (s: number) => void,
    setHeader: (n: string, v: string) => void,
  ): HttpContext {
    const params: Record<string, string> = {};
    for (const p of req.params ?? []) params[p.name] = p.value;
    const searchParams = new URLSearchParams(req.query ?? "");
    const query: Record<string, string> = {};
    for (const [k, v] of searchParams) query[k] = v;
    const headers: Record<string, string> = {};
    for (const h of req.headers ?? []) {
      const n = String(h.name).toLowerCase();
      headers[n] = n in headers ? `${headers[n]}, ${h.value}` : h.value;
    }
    const rawBody: Buffer = Buffer.isBuffer(req.body) ? req.body : Buffer.from(req.body ?? []);
    const user = authFromProto(req.user);
    let parsed: { v: unknown } | null = null;
    return {
      requestId,
      method: req.method ?? "",
      path: req.path ?? "",
      route: req.route ?? "",
      params,
      query,
      searchParams,
      headers,
      get body() {
        if (!parsed) parsed = { v: parseBody(rawBody, headers["content-type"] ?? "") };
        return parsed.v;
      },
      rawBody,
      user,
      auth: user,
      remoteAddress: req.remoteAddress ?? "",
      logger: this.logger,
      setStatus(s: number) {
        setStatus(s);
      },
      setHeader(n: string, v: string) {
        setHeader(n, v);
      },
    };
  }
}

function parseBody(raw: Buffer, contentType: string): unknown {
  if (raw.length === 0) return undefined;
  const ct = contentType.toLowerCase();
  if (ct.includes("json")) {
    try {
      return JSON.parse(raw.toString("utf8"));
    } catch {
      throw new BadRequestError("request body is not valid JSON");
    }
  }
  if (ct.startsWith("application/x-www-form-urlencoded")) {
    return Object.fromEntries(new URLSearchParams(raw.toString("utf8")));
  }
  if (ct.startsWith("text/")) return raw.toString("utf8");
  if (!ct) {
    // no content type: JSON if it parses, else the bytes
    try {
      return JSON.parse(raw.toString("utf8"));
    } catch {
      return raw;
    }
  }
  return raw;
}

/** Creates a service; call start() once its actions and handlers are registered. */
export function createService(opts: ServiceOptions): Service {
  return new Service(opts);
}
