// The WebSocket half: connection events, message handlers, middleware,
// groups, and the commands a service sends (send, rooms, emit, close).
import {
  ForbiddenError,
  LinkdError,
  NotFoundError,
  TimeoutError,
  UnauthorizedError,
  ValidationError,
  errorResponse,
  toLinkdError,
} from "./errors";
import type { AuthContext, HandlerOptions, Logger } from "./types";

/** What the WebSocket API needs from the link to linkd. */
export interface Link {
  /** Sends one frame; throws ServiceUnavailableError when not registered. */
  send(frame: Record<string, unknown>): void;
  /** Sends a command carrying a fresh op_id and resolves on its CommandResult. */
  command(kind: string, body: Record<string, unknown>): Promise<void>;
  /** Sends a RoomsQuery and resolves with the rooms. */
  queryRooms(connectionId: string): Promise<string[]>;
  /** Sends a RoomCountQuery and resolves with the members on every node. */
  queryRoomCount(room: string, timeoutMs: number): Promise<RoomCount>;
  readonly logger: Logger;
}

/** Members of a room: on this linkd, or in cluster mode on every node that answered. */
export interface RoomCount {
  members: number;
  /** Nodes that answered, this one included (1 without a cluster). */
  nodes: number;
  /** Nodes linkd believes alive, itself included: fewer answers than this means a partial count. */
  nodesKnown: number;
}

/** A live client connection, as the service knows it. */
export interface SocketInfo {
  id: string;
  remoteAddress: string;
  connectedAt: Date;
  path: string;
  auth: AuthContext;
  /** Rooms as last known to the SDK (ctx.rooms() asks linkd). */
  rooms: Set<string>;
  /** On onResume: the id of the dropped connection this one took over. */
  previousId?: string;
  /**
   * On onDisconnect: the close code (0: the connection dropped without a close
   * handshake — on a path with recovery its client may still come back, see
   * onResume; 1000/1001/...: it closed on purpose).
   */
  closeCode?: number;
}

export type Next = () => Promise<unknown>;
export type MessageHandler = (ctx: WsContext) => unknown | Promise<unknown>;
export type LifecycleHandler = (ctx: WsContext) => unknown | Promise<unknown>;
export type Middleware = (ctx: WsContext, next: Next) => unknown | Promise<unknown>;

/** True when an AuthContext already says what this UserContext says (so it can be kept as it is). */
function sameAuth(a: AuthContext, u: any): boolean {
  const roles = u.roles;
  if (a.userId !== (u.userId ?? "") || a.username !== (u.username ?? "") || a.tenantId !== (u.tenantId ?? "") ||
      a.authenticated !== !!u.authenticated) return false;
  const n = Array.isArray(roles) ? roles.length : 0;
  if (a.roles.length !== n) return false;
  for (let i = 0; i < n; i++) if (a.roles[i] !== roles[i]) return false;
  return true;
}

export function authFromProto(u: any): AuthContext {
  return {
    userId: u?.userId ?? "",
    username: u?.username ?? "",
    roles: Array.isArray(u?.roles) ? u.roles.slice() : [],
    tenantId: u?.tenantId ?? "",
    authenticated: !!u?.authenticated,
  };
}

/**
 * JSON text for an envelope's "data"; null/undefined travel as empty bytes
 * (linkd writes null). A string: the service's frame writer puts it into the
 * bytes field as UTF-8 with no Buffer in between.
 */
function jsonPayload(data: unknown): string {
  if (data === undefined || data === null) return "";
  const text = JSON.stringify(data);
  return text === undefined ? "" : text;
}

/** A push target: one room, one connection or everyone, minus some connections. */
export class Target {
  constructor(
    private readonly link: Link,
    private readonly target: { room?: string; connectionId?: string; broadcastAll?: boolean },
    private readonly excluded: string[] = [],
  ) {}

  /** The same target without these connections. */
  except(...ids: Array<string | string[]>): Target {
    const more = ids.flat().filter((id) => typeof id === "string" && id.length > 0);
    return new Target(this.link, this.target, [...this.excluded, ...more]);
  }

  /** Pushes {"type": event, "data": data}; resolves once linkd has accepted it. */
  emit(event: string, data?: unknown): Promise<void> {
    return this.link.command("wsOutbound", {
      ...this.target,
      event,
      payload: jsonPayload(data),
      exceptConnections: this.excluded,
    });
  }

  /** Raw paths: sends the frame as it is (text unless binary). */
  emitRaw(frame: string | Buffer, binary = typeof frame !== "string"): Promise<void> {
    return this.link.command("wsOutbound", {
      ...this.target,
      event: "",
      payload: typeof frame === "string" ? Buffer.from(frame, "utf8") : frame,
      binary,
      exceptConnections: this.excluded,
    });
  }
}

/** What a handler gets: the connection, the message, and what it may do. */
export class WsContext {
  /** Free space for middleware to hand things to handlers. */
  readonly state: Record<string, unknown> = {};
  /** The envelope "data" (parsed JSON), or the frame (Buffer/string) on raw paths. */
  message: any;
  readonly messageType: string;
  readonly correlationId: string;
  /** Raw paths: the frame was binary. */
  readonly binary: boolean;
  readonly logger: Logger;

  constructor(
    private readonly api: WebSocketApi,
    readonly socketInfo: SocketInfo,
    init: { message?: unknown; messageType?: string; correlationId?: string; binary?: boolean; rooms?: string[] } = {},
  ) {
    this.message = init.message;
    this.messageType = init.messageType ?? "";
    this.correlationId = init.correlationId ?? "";
    this.binary = !!init.binary;
    this.logger = api.logger;
    this.fixedRooms = init.rooms;
  }

  private readonly fixedRooms?: string[];

  get socket(): { id: string; remoteAddress: string; connectedAt: Date } {
    const s = this.socketInfo;
    return { id: s.id, remoteAddress: s.remoteAddress, connectedAt: s.connectedAt };
  }

  get auth(): AuthContext {
    return this.socketInfo.auth;
  }

  /** Same as auth (the name used by HTTP contexts). */
  get user(): AuthContext {
    return this.socketInfo.auth;
  }

  /** Pushes {"type": event, "data": data} to this connection. */
  send(event: string, data?: unknown): Promise<void> {
    return this.api.send(this.socketInfo.id, event, data);
  }

  /** Raw paths: sends a frame as it is to this connection. */
  sendRaw(frame: string | Buffer, binary?: boolean): Promise<void> {
    return this.api.toConnection(this.socketInfo.id).emitRaw(frame, binary);
  }

  join(room: string): Promise<void> {
    return this.api.join(this.socketInfo.id, room);
  }

  leave(room: string): Promise<void> {
    return this.api.leave(this.socketInfo.id, room);
  }

  /**
   * The rooms this connection is in, as linkd has them. In onDisconnect the
   * connection is gone: the rooms it was in (from the event) are returned.
   */
  rooms(): Promise<string[]> {
    if (this.fixedRooms) return Promise.resolve(this.fixedRooms.slice());
    return this.api.rooms(this.socketInfo.id);
  }

  /** Everyone in a room (this connection included unless excepted). */
  to(room: string): Target {
    return this.api.to(room);
  }

  /** Every connection on the service's path except this one. */
  get broadcast(): Target {
    return this.api.everyone.except(this.socketInfo.id);
  }

  /** Every connection on the service's path, this one included. */
  get everyone(): Target {
    return this.api.everyone;
  }

  /** Closes this connection (code 1000 by default). */
  disconnect(code = 1000, reason = ""): Promise<void> {
    return this.api.disconnect(this.socketInfo.id, code, reason);
  }
}

interface HandlerEntry {
  type: string;
  opts: HandlerOptions;
  handler: MessageHandler;
}

interface MiddlewareEntry {
  patterns: RegExp[] | null; // null: every message
  fn: Middleware;
}

function globToRegExp(pattern: string): RegExp {
  const esc = pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*");
  return new RegExp("^" + esc + "$");
}

function joinPrefix(prefix: string, name: string): string {
  if (!prefix) return name;
  if (/[.:/]$/.test(prefix)) return prefix + name;
  return prefix + "." + name;
}

/** Registration surface shared by the API and its groups. */
export interface WsRegistrar {
  on(type: string, handler: MessageHandler): this;
  on(type: string, opts: HandlerOptions, handler: MessageHandler): this;
  use(middleware: Middleware): this;
  use(pattern: string | string[], middleware: Middleware): this;
  group(prefix: string, fn: (g: WsGroup) => void): this;
  group(prefix: string, opts: HandlerOptions, fn: (g: WsGroup) => void): this;
}

/** Handlers registered under a common type prefix and common options. */
export class WsGroup implements WsRegistrar {
  constructor(private readonly api: WebSocketApi, private readonly prefix: string, private readonly opts: HandlerOptions) {}

  on(type: string, a: HandlerOptions | MessageHandler, b?: MessageHandler): this {
    const [opts, handler] = typeof a === "function" ? [{}, a] : [a, b!];
    this.api.on(joinPrefix(this.prefix, type), { ...this.opts, ...opts }, handler);
    return this;
  }

  use(a: string | string[] | Middleware, b?: Middleware): this {
    if (typeof a === "function") {
      this.api.use(joinPrefix(this.prefix, "*"), a);
    } else {
      const patterns = (Array.isArray(a) ? a : [a]).map((p) => joinPrefix(this.prefix, p));
      this.api.use(patterns, b!);
    }
    return this;
  }

  group(prefix: string, a: HandlerOptions | ((g: WsGroup) => void), b?: (g: WsGroup) => void): this {
    const [opts, fn] = typeof a === "function" ? [{}, a] : [a, b!];
    fn(new WsGroup(this.api, joinPrefix(this.prefix, prefix), { ...this.opts, ...opts }));
    return this;
  }
}

/** service.ws */
export class WebSocketApi implements WsRegistrar {
  /** Live connections on the service's path, rebuilt from EXISTING events after a (re)registration. */
  readonly sockets = new Map<string, SocketInfo>();

  private readonly handlers = new Map<string, HandlerEntry>();
  private readonly middlewares: MiddlewareEntry[] = [];
  private readonly connectHandlers: LifecycleHandler[] = [];
  private readonly disconnectHandlers: LifecycleHandler[] = [];
  private readonly existingHandlers: LifecycleHandler[] = [];
  private readonly resumeHandlers: LifecycleHandler[] = [];
  private catchAll: MessageHandler | null = null;

  constructor(private readonly link: Link, private readonly raw: boolean) {}

  get logger(): Logger {
    return this.link.logger;
  }

  // --- registration -------------------------------------------------------

  onConnect(handler: LifecycleHandler): this {
    this.connectHandlers.push(handler);
    return this;
  }

  onDisconnect(handler: LifecycleHandler): this {
    this.disconnectHandlers.push(handler);
    return this;
  }

  /** Called for each connection linkd reports after a (re)registration (EXISTING). */
  onExisting(handler: LifecycleHandler): this {
    this.existingHandlers.push(handler);
    return this;
  }

  /**
   * Recovery paths: a client came back on a new connection (ctx.socket.id)
   * and took over its dropped one (ctx.socketInfo.previousId, already seen
   * by onDisconnect) with its rooms (ctx.socketInfo.rooms).
   */
  onResume(handler: LifecycleHandler): this {
    this.resumeHandlers.push(handler);
    return this;
  }

  /** Catch-all: messages whose type has no handler (and every message on raw paths). */
  onMessage(handler: MessageHandler): this {
    this.catchAll = handler;
    return this;
  }

  on(type: string, a: HandlerOptions | MessageHandler, b?: MessageHandler): this {
    const [opts, handler] = typeof a === "function" ? [{}, a] : [a ?? {}, b];
    if (typeof handler !== "function") throw new TypeError(`ws.on("${type}"): handler must be a function`);
    if (this.handlers.has(type)) throw new Error(`ws.on("${type}"): a handler is already registered`);
    this.handlers.set(type, { type, opts, handler });
    return this;
  }

  use(a: string | string[] | Middleware, b?: Middleware): this {
    this.chains.clear();
    if (typeof a === "function") {
      this.middlewares.push({ patterns: null, fn: a });
    } else {
      if (typeof b !== "function") throw new TypeError("ws.use: middleware must be a function");
      const patterns = (Array.isArray(a) ? a : [a]).map(globToRegExp);
      this.middlewares.push({ patterns, fn: b });
    }
    return this;
  }

  group(prefix: string, a: HandlerOptions | ((g: WsGroup) => void), b?: (g: WsGroup) => void): this {
    const [opts, fn] = typeof a === "function" ? [{}, a] : [a, b!];
    fn(new WsGroup(this, prefix, opts));
    return this;
  }

  // --- commands -----------------------------------------------------------

  to(room: string): Target {
    return new Target(this.link, { room });
  }

  toConnection(connectionId: string): Target {
    return new Target(this.link, { connectionId });
  }

  get everyone(): Target {
    return new Target(this.link, { broadcastAll: true });
  }

  send(connectionId: string, event: string, data?: unknown): Promise<void> {
    return this.toConnection(connectionId).emit(event, data);
  }

  async join(connectionId: string, room: string): Promise<void> {
    await this.link.command("wsRoomOperation", { connectionId, room, operation: 0 });
    this.sockets.get(connectionId)?.rooms.add(room);
  }

  async leave(connectionId: string, room: string): Promise<void> {
    await this.link.command("wsRoomOperation", { connectionId, room, operation: 1 });
    this.sockets.get(connectionId)?.rooms.delete(room);
  }

  /**
   * How many members a room has. In cluster mode every node is asked and the
   * answer comes when all have answered or after timeoutMs (default 500, at
   * most 5000); compare nodes with nodesKnown to see if it is complete.
   */
  roomCount(room: string, opts: { timeoutMs?: number } = {}): Promise<RoomCount> {
    return this.link.queryRoomCount(room, opts.timeoutMs ?? 0);
  }

  async rooms(connectionId: string): Promise<string[]> {
    const rooms = await this.link.queryRooms(connectionId);
    const s = this.sockets.get(connectionId);
    if (s) s.rooms = new Set(rooms);
    return rooms;
  }

  disconnect(connectionId: string, code = 1000, reason = ""): Promise<void> {
    return this.link.command("closeConnection", { connectionId, code, reason });
  }

  // --- events from linkd --------------------------------------------------

  /** After a (re)registration: linkd will report every live connection again. */
  resetSockets(): void {
    this.sockets.clear();
  }

  async handleConnectionEvent(ev: any): Promise<void> {
    const id = String(ev.connectionId ?? "");
    if (!id) return;
    const connectedAtMs = Number(ev.connectedAtMs ?? 0);
    const info: SocketInfo = {
      id,
      remoteAddress: ev.remoteAddress ?? "",
      connectedAt: new Date(connectedAtMs > 0 ? connectedAtMs : Date.now()),
      path: ev.path ?? "",
      auth: authFromProto(ev.user),
      rooms: new Set<string>(Array.isArray(ev.rooms) ? ev.rooms : []),
    };
    const type = Number(ev.eventType ?? 0);
    const opening = this.connecting.get(id);
    if (type === 1) {
      if (opening) await opening; // onDisconnect runs after onConnect finished
      // DISCONNECTED: keep what we knew (rooms from the event win)
      const known = this.sockets.get(id);
      this.sockets.delete(id);
      const merged = { ...(known ?? info), rooms: info.rooms, closeCode: Number(ev.closeCode ?? 0) };
      const ctx = new WsContext(this, merged, { rooms: [...info.rooms] });
      await this.runLifecycle(this.disconnectHandlers, ctx, "onDisconnect");
      return;
    }
    if (type === 3) {
      // RESUMED: the connection (already CONNECTED) has its rooms back
      if (opening) await opening;
      const known = this.sockets.get(id);
      const resumed = { ...(known ?? info), rooms: info.rooms, previousId: String(ev.previousConnectionId ?? "") };
      this.sockets.set(id, resumed);
      await this.runLifecycle(this.resumeHandlers, new WsContext(this, resumed), "onResume");
      return;
    }
    this.sockets.set(id, info);
    const ctx = new WsContext(this, info);
    const done = this.runLifecycle(type === 2 ? this.existingHandlers : this.connectHandlers, ctx, type === 2 ? "onExisting" : "onConnect");
    this.connecting.set(id, done);
    try {
      await done;
    } finally {
      if (this.connecting.get(id) === done) this.connecting.delete(id);
    }
  }

  /** Connections whose onConnect/onExisting handlers are still running: their messages wait. */
  private readonly connecting = new Map<string, Promise<void>>();

  private async runLifecycle(list: LifecycleHandler[], ctx: WsContext, what: string): Promise<void> {
    for (const h of list) {
      try {
        await h(ctx);
      } catch (err) {
        this.logger.error(`${what} handler failed`, { connectionId: ctx.socketInfo.id, error: describe(err) });
      }
    }
  }

  /** The middleware that applies to a message type, in registration order (cached per type). */
  private readonly chains = new Map<string, Middleware[]>();

  private chainFor(type: string): Middleware[] {
    let chain = this.chains.get(type);
    if (!chain) {
      chain = this.middlewares.filter((m) => m.patterns === null || m.patterns.some((p) => p.test(type))).map((m) => m.fn);
      if (this.chains.size > 10000) this.chains.clear();   // message types are few; never let the cache grow without bound
      this.chains.set(type, chain);
    }
    return chain;
  }

  /** The connection a message belongs to (a new entry if its event is still on the way); its auth refreshed. */
  private inboundSocket(msg: any): SocketInfo | null {
    const id = String(msg.connectionId ?? "");
    if (!id) return null;
    let info = this.sockets.get(id);
    if (!info) {
      // a connection we have not heard of (its event may still be on the way)
      info = { id, remoteAddress: "", connectedAt: new Date(), path: "", auth: authFromProto(msg.user), rooms: new Set() };
      this.sockets.set(id, info);
    } else if (msg.user && !sameAuth(info.auth, msg.user)) {
      info.auth = authFromProto(msg.user);
    }
    return info;
  }

  /**
   * A client message (the hot path: the service calls it for every
   * WebSocketInbound). A handler that returns a value (not a promise) is
   * answered synchronously, with no promise made on the way; a message never
   * overtakes its connection's onConnect.
   */
  handleInboundFast(msg: any): void {
    const info = this.inboundSocket(msg);
    if (!info) return;
    const opening = this.connecting.size ? this.connecting.get(info.id) : undefined;
    if (opening) {
      opening.then(() => this.runInbound(info, msg)).catch((err) => this.logger.error("inbound message failed", { error: describe(err) }));
      return;
    }
    this.runInbound(info, msg);
  }

  /** Parses the message once, runs its handler, replies; a promise only when the handler is asynchronous. Never rejects. */
  private runInbound(info: SocketInfo, msg: any): Promise<void> | undefined {
    const id = info.id;
    const correlationId: string = msg.correlationId ?? "";
    const type: string = msg.messageType ?? "";
    const raw = msg.payload;
    const payload: Buffer = Buffer.isBuffer(raw) ? raw : Buffer.from(raw ?? []);

    let message: unknown;
    if (this.raw) {
      message = msg.binary ? payload : payload.toString("utf8");
    } else {
      try {
        message = payload.length ? JSON.parse(payload.toString("utf8")) : null;
      } catch {
        this.reply(id, correlationId, undefined, new LinkdError(400, "INVALID_MESSAGE", "data is not valid JSON"));
        return undefined;
      }
    }
    const ctx = new WsContext(this, info, { message, messageType: type, correlationId, binary: !!msg.binary });
    const entry = this.handlers.get(type);
    let result: unknown;
    try {
      result = this.dispatch(ctx, entry);
      const timeoutMs = entry?.opts.timeoutMs;
      if (timeoutMs && timeoutMs > 0) result = withTimeout(Promise.resolve(result), timeoutMs, type);
    } catch (err) {
      this.fail(id, correlationId, type, err);
      return undefined;
    }
    if (result !== null && (typeof result === "object" || typeof result === "function") && typeof (result as any).then === "function") {
      return (result as Promise<unknown>).then(
        (v) => this.reply(id, correlationId, v),
        (err) => this.fail(id, correlationId, type, err),
      );
    }
    this.reply(id, correlationId, result);
    return undefined;
  }

  private fail(id: string, correlationId: string, type: string, err: unknown): void {
    const error = toLinkdError(err);
    if (error.status >= 500 && error.type === "INTERNAL_ERROR") {
      this.logger.error("message handler failed", { type, connectionId: id, error: describe(err) });
    }
    this.reply(id, correlationId, undefined, error);
  }

  /** Checks, then the middleware chain and the handler: the handler's value, or a promise of it; throws on a refused message. */
  private dispatch(ctx: WsContext, entry: HandlerEntry | undefined): unknown {
    if (entry) {
      const { auth, roles, schema, validate } = entry.opts;
      if ((auth || (roles && roles.length)) && !ctx.auth.authenticated) throw new UnauthorizedError();
      if (roles && roles.length && !roles.some((r) => ctx.auth.roles.includes(r))) {
        throw new ForbiddenError(`one of the roles ${roles.join(", ")} is required`);
      }
      if (schema || validate) {
        try {
          if (schema) ctx.message = schema.parse(ctx.message);
          if (validate) {
            const v = validate(ctx.message);
            if (v !== undefined) ctx.message = v;
          }
        } catch (err) {
          if (err instanceof LinkdError) throw err;
          throw new ValidationError(err instanceof Error ? err.message : "invalid message", (err as any)?.issues);
        }
      }
    }
    const type = ctx.messageType;
    const chain = this.middlewares.length ? this.chainFor(type) : NO_MIDDLEWARE;
    if (chain.length === 0) {
      if (entry) return entry.handler(ctx);
      if (this.catchAll) return this.catchAll(ctx);
      throw new NotFoundError(`no handler for message type "${type}"`);
    }
    const final = async (): Promise<unknown> => {
      if (entry) return entry.handler(ctx);
      if (this.catchAll) return this.catchAll(ctx);
      throw new NotFoundError(`no handler for message type "${type}"`);
    };
    let index = -1;
    const step = async (i: number): Promise<unknown> => {
      if (i <= index) throw new Error("next() called more than once");
      index = i;
      if (i === chain.length) return final();
      return chain[i](ctx, () => step(i + 1));
    };
    return step(0);
  }

  private reply(connectionId: string, correlationId: string, result: unknown, error?: LinkdError): void {
    if (!correlationId) return; // no id: the client expects no reply
    const wsResponse: Record<string, unknown> = { connectionId, correlationId };
    if (error) wsResponse.error = errorResponse(error);
    else if (this.raw && Buffer.isBuffer(result)) wsResponse.data = result;   // encoded at once by send(): no copy
    else if (this.raw && typeof result === "string") wsResponse.data = Buffer.from(result, "utf8");
    else wsResponse.data = jsonPayload(result);
    try {
      this.link.send({ wsResponse });
    } catch (err) {
      if (!error && err instanceof LinkdError && err.type === "PAYLOAD_TOO_LARGE") {
        // the client would otherwise wait for linkd's TIMEOUT: an error reply fits
        this.logger.error("reply over linkd's frame limit: an error is sent instead", { connectionId, correlationId, error: err.message });
        this.reply(connectionId, correlationId, undefined, new LinkdError(500, "RESPONSE_TOO_LARGE", "the reply is too large"));
        return;
      }
      this.logger.warn("could not send a reply", { connectionId, correlationId, error: describe(err) });
    }
  }
}

const NO_MIDDLEWARE: Middleware[] = [];

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new TimeoutError(`handler for "${what}" took longer than ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

export function describe(err: unknown): string {
  if (err instanceof Error) return err.stack || err.message;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}
