// The chat service of the Linkd design sketch, on linkd-sdk.
//
// WebSocket path /ws/chat. Client messages (envelope {"type","data","id"}):
//   chat.identify {name}            -> {userId, username, online}
//   chat.join     {room}            -> {room, history, members}; room gets chat.user_joined
//   chat.leave    {room}            -> {room};                   room gets chat.user_left
//   chat.send     {room, message}   -> {success, id};            room gets chat.message
//   chat.typing   {room, typing}    ->                           room (minus sender) gets chat.typing
//   chat.history  {room, before?, limit?} -> {room, messages}
//   chat.rooms                      -> {rooms (this connection's), all (known rooms)}
//   chat.online                     -> {online}
//   chat.members  {room}            -> {room, members}
// Everyone gets presence.online / presence.offline when a user comes or goes.
// HTTP: GET / (the page), /chat.js, /linkd-client.js, /chat.css, /favicon.svg, /chat/health, /chat/ready,
// /chat/live, /chat/rooms, /chat/rooms/:room/messages.
import * as fs from "fs";
import * as path from "path";
import { createService, reply, ForbiddenError, ValidationError, WebSocketOptions, WsContext } from "linkd-sdk";
import { Store } from "./store";

const socketPath = process.env.LINKD_SOCKET || undefined; // SDK default otherwise
const dbFile = process.env.CHAT_DB || path.join(process.cwd(), "run", "chat.db");
const publicDir = path.join(__dirname, "..", "public");
const HISTORY = 50;

const store = new Store(dbFile);
// Connection recovery (issue 10): a page that drops for less than windowMs gets
// its rooms back and the room pushes it missed (up to `history` per room); past
// that the page reloads the room's history.
const websocket: WebSocketOptions = {
  enabled: true,
  path: "/ws/chat",
  maxConnectionsPerUser: 10,
  recovery: { windowMs: 30000, history: 100 },
};
const service = createService({
  name: "chat",
  version: "1.0.0",
  namespace: "examples",
  socketPath,
  websocket,
});
const log = service.logger;

// --- who is who -------------------------------------------------------------

interface Identity {
  userId: string;
  username: string;
}

/** connection id -> identity (from the JWT, or chosen with chat.identify). */
const identities = new Map<string, Identity>();

function identityOf(ctx: WsContext): Identity {
  let id = identities.get(ctx.socket.id);
  if (!id) {
    id = ctx.auth.authenticated
      ? { userId: ctx.auth.userId, username: ctx.auth.username || ctx.auth.userId }
      : { userId: `guest-${ctx.socket.id}`, username: `guest-${ctx.socket.id.split(".")[0]}` };
    identities.set(ctx.socket.id, id);
  }
  return id;
}

/** Users with at least one live connection. */
function online(): Identity[] {
  const seen = new Map<string, Identity>();
  for (const connId of service.ws.sockets.keys()) {
    const id = identities.get(connId);
    if (id && !seen.has(id.userId)) seen.set(id.userId, id);
  }
  return [...seen.values()];
}

function connectionsOf(userId: string): number {
  let n = 0;
  for (const connId of service.ws.sockets.keys()) if (identities.get(connId)?.userId === userId) n++;
  return n;
}

function members(room: string): Identity[] {
  const seen = new Map<string, Identity>();
  for (const s of service.ws.sockets.values()) {
    if (!s.rooms.has(room)) continue;
    const id = identities.get(s.id);
    if (id && !seen.has(id.userId)) seen.set(id.userId, id);
  }
  return [...seen.values()];
}

// --- validation ---------------------------------------------------------------

function roomName(data: any): string {
  const room = data?.room;
  if (typeof room !== "string" || !/^[\w.-]{1,64}$/.test(room)) {
    throw new ValidationError("room must be 1-64 letters, digits, '_', '-' or '.'", { field: "room" });
  }
  return room;
}

function userName(data: any): string {
  const name = typeof data?.name === "string" ? data.name.trim() : "";
  if (!name || name.length > 32 || /[\u0000-\u001f]/.test(name)) {
    throw new ValidationError("name must be 1-32 printable characters", { field: "name" });
  }
  return name;
}

async function requireMember(ctx: WsContext, room: string): Promise<void> {
  const rooms = ctx.socketInfo.rooms.has(room) ? [room] : await ctx.rooms();
  if (!rooms.includes(room)) throw new ForbiddenError(`join ${room} first`);
}

// --- WebSocket ----------------------------------------------------------------

service.ws.onConnect(async (ctx) => {
  const id = identityOf(ctx);
  log.info("connected", { connection: ctx.socket.id, user: id.userId });
  if (ctx.auth.authenticated && connectionsOf(id.userId) === 1) {
    await ctx.broadcast.emit("presence.online", id);
  }
});

service.ws.onExisting((ctx) => {
  identityOf(ctx); // after a restart: guests get a fresh guest name until they identify again
});

async function announceLeft(id: Identity, rooms: string[]): Promise<void> {
  for (const room of rooms) {
    await service.ws.to(room).emit("chat.user_left", { room, ...id }).catch(() => {});
  }
  if (connectionsOf(id.userId) === 0) await service.ws.everyone.emit("presence.offline", id).catch(() => {});
}

/** Connections that dropped without a close handshake: linkd keeps them for the
 * recovery window, and "left" is said only if they do not come back (onResume). */
const dropped = new Map<string, { id: Identity; timer: NodeJS.Timeout }>();

service.ws.onDisconnect(async (ctx) => {
  const id = identities.get(ctx.socket.id);
  identities.delete(ctx.socket.id);
  if (!id) return;
  const rooms = await ctx.rooms(); // the rooms it was in, from linkd's event
  if (ctx.socketInfo.closeCode) { await announceLeft(id, rooms); return; }   // closed on purpose
  const timer = setTimeout(() => {
    dropped.delete(ctx.socket.id);
    void announceLeft(id, rooms);
  }, websocket.recovery!.windowMs);
  timer.unref();
  dropped.set(ctx.socket.id, { id, timer });
});

// The page came back within the window: same name and tag, nobody is told it left.
service.ws.onResume((ctx) => {
  const prev = dropped.get(ctx.socketInfo.previousId ?? "");
  if (!prev) return;
  clearTimeout(prev.timer);
  dropped.delete(ctx.socketInfo.previousId!);
  identities.set(ctx.socket.id, prev.id);
});

// a log line per message, and how long it took
service.ws.use(async (ctx, next) => {
  const t0 = Date.now();
  try {
    return await next();
  } finally {
    log.debug("message", { type: ctx.messageType, connection: ctx.socket.id, ms: Date.now() - t0 });
  }
});

service.ws.group("chat", (chat) => {
  chat.on("identify", async (ctx) => {
    const name = userName(ctx.message);
    const old = identityOf(ctx);
    const id: Identity = ctx.auth.authenticated ? { userId: ctx.auth.userId, username: name } : { userId: old.userId, username: name };
    identities.set(ctx.socket.id, id);
    await ctx.everyone.emit("presence.online", id);
    return { ...id, online: online() };
  });

  chat.on("join", async (ctx) => {
    const room = roomName(ctx.message);
    const id = identityOf(ctx);
    await ctx.join(room);
    await ctx.to(room).except(ctx.socket.id).emit("chat.user_joined", { room, ...id });
    return { room, history: store.history(room, HISTORY), members: members(room) };
  });

  chat.on("leave", async (ctx) => {
    const room = roomName(ctx.message);
    await ctx.leave(room);
    await ctx.to(room).emit("chat.user_left", { room, ...identityOf(ctx) });
    return { room };
  });

  chat.on("send", async (ctx) => {
    const room = roomName(ctx.message);
    const text = ctx.message?.message ?? ctx.message?.content;
    if (typeof text !== "string" || !text.trim() || text.length > 2000) {
      throw new ValidationError("message must be 1-2000 characters", { field: "message" });
    }
    await requireMember(ctx, room);
    const id = identityOf(ctx);
    const msg = store.add(room, id.userId, id.username, text);
    await ctx.to(room).emit("chat.message", msg);
    return { success: true, id: msg.id };
  });

  chat.on("typing", async (ctx) => {
    const room = roomName(ctx.message);
    await requireMember(ctx, room);
    const typing = ctx.message?.typing !== false;
    await ctx.to(room).except(ctx.socket.id).emit("chat.typing", { room, ...identityOf(ctx), typing });
  });

  chat.on("history", (ctx) => {
    const room = roomName(ctx.message);
    const limit = Math.min(Math.max(Number(ctx.message?.limit) || HISTORY, 1), 200);
    const before = Number(ctx.message?.before) || undefined;
    return { room, messages: store.history(room, limit, before) };
  });

  chat.on("rooms", async (ctx) => ({ rooms: await ctx.rooms(), all: store.rooms() }));

  chat.on("online", () => ({ online: online() }));

  chat.on("members", (ctx) => {
    const room = roomName(ctx.message);
    return { room, members: members(room) };
  });
});

// --- HTTP -----------------------------------------------------------------------

function staticFile(route: string, file: string, contentType: string): void {
  service.action(`static:${file}`, { route, method: "GET" }, () =>
    reply(fs.readFileSync(path.join(publicDir, file)), { contentType, headers: { "cache-control": "no-cache" } }),
  );
}
staticFile("/", "index.html", "text/html; charset=utf-8");
staticFile("/chat.js", "chat.js", "text/javascript; charset=utf-8");
staticFile("/chat.css", "chat.css", "text/css; charset=utf-8");
// the page links it; without one browsers ask for /favicon.ico on every load and get a 404
staticFile("/favicon.svg", "favicon.svg", "image/svg+xml");
// the client library's browser module, built into dist/ by scripts/client.js
service.action("static:linkd-client.js", { route: "/linkd-client.js", method: "GET" }, () =>
  reply(fs.readFileSync(path.join(__dirname, "linkd-client.js")), {
    contentType: "text/javascript; charset=utf-8",
    headers: { "cache-control": "no-cache" },
  }),
);

service.action("health", { route: "/chat/health" }, () => ({
  status: "healthy",
  service: "chat",
  connections: service.ws.sockets.size,
  online: online().length,
}));
service.action("ready", { route: "/chat/ready" }, () => ({ ready: service.connected && store.ping() }));
service.action("live", { route: "/chat/live" }, () => ({ live: true }));
service.action("rooms", { route: "/chat/rooms" }, () => ({
  rooms: store.rooms().map((r) => ({ ...r, members: members(r.room).length })),
}));
service.action("messages", { route: "/chat/rooms/:room/messages" }, (ctx) => {
  const room = roomName({ room: ctx.params.room });
  const limit = Math.min(Math.max(Number(ctx.query.limit) || HISTORY, 1), 200);
  return { room, messages: store.history(room, limit, Number(ctx.query.before) || undefined) };
});

// --- run ------------------------------------------------------------------------

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  log.info("stopping", { signal });
  await service.stop();
  store.close();
  process.exit(0);
}
process.on("SIGTERM", () => void shutdown("SIGTERM"));
process.on("SIGINT", () => void shutdown("SIGINT"));

service
  .start()
  .then(() => log.info("chat service ready", { socket: service.socketPath, db: dbFile }))
  .catch((err) => {
    log.error("chat service could not register", { error: String(err?.message ?? err) });
    process.exit(1);
  });
