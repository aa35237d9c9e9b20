// Public types shared by the HTTP and WebSocket halves of the SDK.

/** Who sent a request or owns a connection (from the JWT linkd verified). */
export interface AuthContext {
  /** JWT "sub"; "" when not authenticated. */
  userId: string;
  /** "preferred_username" or "username". */
  username: string;
  roles: string[];
  tenantId: string;
  /** false: no (valid) token was presented. */
  authenticated: boolean;
}

export interface Logger {
  debug(msg: string, meta?: Record<string, unknown>): void;
  info(msg: string, meta?: Record<string, unknown>): void;
  warn(msg: string, meta?: Record<string, unknown>): void;
  error(msg: string, meta?: Record<string, unknown>): void;
}

export interface WebSocketOptions {
  enabled?: boolean;
  /** Exact path clients connect to, e.g. "/ws/chat". */
  path: string;
  /** 0 or absent: linkd's default. */
  heartbeatIntervalMs?: number;
  maxConnectionsPerUser?: number;
  maxMessageSizeBytes?: number;
  /** permessage-deflate wanted. */
  compression?: boolean;
  /** Refuse the upgrade (401) without a valid token. */
  authRequired?: boolean;
  /** No JSON envelope: frames are forwarded as they are. */
  raw?: boolean;
  /**
   * Connection recovery: a client that drops and comes back within windowMs
   * (with the token linkd gave it) gets its rooms back and the last `history`
   * room pushes it missed; the service sees onResume. Off when absent.
   */
  recovery?: { windowMs: number; history: number };
}

export interface ServiceOptions {
  name: string;
  version?: string;
  namespace?: string;
  /** Unique per process; linkd makes one when empty. */
  instanceId?: string;
  /** linkd's service socket. Default: $LINKD_SOCKET, else /run/linkd/linkd.sock as root, else ./run/linkd.sock. */
  socketPath?: string;
  websocket?: WebSocketOptions;
  logger?: Logger;
  /** How long to wait for linkd's CommandResult / RoomsResult (default 10 s). */
  commandTimeoutMs?: number;
  /**
   * Largest frame this service reads from linkd (default 64 MiB), declared at
   * registration: linkd never sends a bigger one (a bigger HTTP request gets
   * 413, a bigger WebSocket message closes its connection with 1009). A frame
   * over it that arrives anyway is skipped with a warning; the link stays.
   */
  maxFrameBytes?: number;
  /** Reconnect backoff: first delay and cap (defaults 100 ms and 5 s). */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
}

/** Options of an HTTP action. */
export interface ActionOptions {
  /** Path pattern with :param segments, e.g. "/users/:id". */
  route: string;
  /** GET, POST, ... or "*" (default GET). */
  method?: string;
  /** A valid token is required (401 otherwise). */
  auth?: boolean;
  /** One of these roles is required (403 otherwise). */
  roles?: string[];
  /** Allowed Origins for this route, added to linkd's global list. */
  cors?: string[];
}

/** A schema in the style of zod: anything with parse(data) that throws on bad input. */
export interface Schema<T = unknown> {
  parse(data: unknown): T;
}

/** Options of a WebSocket message handler. */
export interface HandlerOptions {
  /** An authenticated connection is required (UNAUTHORIZED otherwise). */
  auth?: boolean;
  /** One of these roles is required (FORBIDDEN otherwise). */
  roles?: string[];
  /** The handler must finish within this time, or the client gets TIMEOUT. */
  timeoutMs?: number;
  /** Validates (and may transform) ctx.message before the handler runs. */
  schema?: Schema;
  validate?: (data: unknown) => unknown;
}
