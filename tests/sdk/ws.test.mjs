// The SDK's WebSocket half against a real linkd: lifecycle, handlers and
// replies, middleware, groups, rooms, pushes, disconnects, and a service
// restart that rebuilds its connection map from EXISTING events.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import sdk from "linkd-sdk";
import { Client, jwt, memoryLogger, startLinkd, waitFor } from "./helpers.mjs";

const { createService, ForbiddenError } = sdk;
const SECRET = "sdk-ws-secret";
const PATH = "/ws/t";

let linkd;
let svc;
const clients = [];
const services = [];
let connected = [];
let disconnected = [];
let existing = [];

const wsUrl = (path = PATH, token) => `ws://127.0.0.1:${linkd.port}${path}${token ? `?token=${token}` : ""}`;

async function client(path, token) {
  const c = await Client.connect(wsUrl(path, token));
  clients.push(c);
  return c;
}

/** The handlers of the test service (also used for its second incarnation). */
function buildService(name = "wstest") {
  const s = createService({
    name,
    socketPath: linkd.socket,
    logger: memoryLogger(),
    reconnect: { initialDelayMs: 50, maxDelayMs: 300 },
    websocket: { enabled: true, path: PATH, maxConnectionsPerUser: 50 },
  });
  services.push(s);
  const ws = s.ws;
  ws.onConnect(async (ctx) => {
    await new Promise((r) => setTimeout(r, 30)); // slow on purpose: messages must wait for it
    connected.push({ id: ctx.socket.id, remote: ctx.socket.remoteAddress, at: ctx.socket.connectedAt, auth: ctx.auth });
    await ctx.send("welcome", { id: ctx.socket.id });
  });
  ws.onDisconnect(async (ctx) => {
    disconnected.push({ id: ctx.socket.id, rooms: await ctx.rooms() });
  });
  ws.onExisting((ctx) => {
    existing.push({ id: ctx.socket.id, rooms: [...ctx.socketInfo.rooms] });
  });
  ws.use(async (ctx, next) => {
    (ctx.state.trace ??= []).push("global");
    return next();
  });
  ws.use("mw.*", async (ctx, next) => {
    ctx.state.trace.push("mw.*");
    return next();
  });
  ws.use(["mw.wrap"], async (ctx, next) => ({ wrapped: await next() }));
  ws.on("echo", (ctx) => ctx.message);
  ws.on("whoami", (ctx) => ({ id: ctx.socket.id, ready: connected.some((x) => x.id === ctx.socket.id), auth: ctx.auth, remote: ctx.socket.remoteAddress, type: ctx.messageType, cid: ctx.correlationId }));
  ws.on("fail", () => {
    throw new ForbiddenError("nope");
  });
  ws.on("boom", () => {
    throw new Error("hidden");
  });
  ws.on("mw.trace", (ctx) => ctx.state.trace);
  ws.on("mw.wrap", () => 5);
  ws.on("slow", { timeoutMs: 100 }, () => new Promise((r) => setTimeout(() => r("late"), 600)));
  ws.on("validated", { validate: (d) => {
    if (typeof d?.n !== "number") throw new Error("n must be a number");
    return { n: d.n * 2 };
  } }, (ctx) => ctx.message);
  ws.group("grp", { auth: true }, (g) => {
    g.on("secret", (ctx) => ({ user: ctx.auth.userId }));
    g.group("adm", { roles: ["admin"] }, (g2) => g2.on("only", () => "admin ok"));
  });
  ws.on("room.join", async (ctx) => {
    await ctx.join(ctx.message.room);
    return (await ctx.rooms()).sort();
  });
  ws.on("room.count", (ctx) => s.ws.roomCount(ctx.message.room));
  ws.on("room.leave", async (ctx) => {
    await ctx.leave(ctx.message.room);
    return (await ctx.rooms()).sort();
  });
  ws.on("room.say", async (ctx) => {
    let t = ctx.to(ctx.message.room);
    if (ctx.message.exceptSelf) t = t.except(ctx.socket.id);
    if (ctx.message.except) t = t.except(...ctx.message.except);
    await t.emit("room.msg", { from: ctx.socket.id, text: ctx.message.text });
    return true;
  });
  ws.on("bcast", async (ctx) => {
    await ctx.broadcast.emit("b", { from: ctx.socket.id });
  });
  ws.on("all", async (ctx) => {
    await ctx.everyone.emit("e", { from: ctx.socket.id });
  });
  ws.on("bye", async (ctx) => {
    await ctx.disconnect(4001, "bye now");
  });
  ws.onMessage((ctx) => ({ caught: ctx.messageType, data: ctx.message }));
  return s;
}

before(async () => {
  linkd = await startLinkd(["--jwt-secret", SECRET]);
  svc = buildService();
  await svc.start();
});

after(async () => {
  for (const c of clients) c.close();
  for (const s of services) await s.stop();
  await linkd?.stop();
});

test("ws: onConnect gets the socket (id, remoteAddress, connectedAt) and ctx.send reaches the client", async () => {
  const before = Date.now();
  const c = await client();
  const w = await c.event("welcome");
  assert.match(w.data.id, /^\d+\.\d+$/);
  await waitFor(() => connected.find((x) => x.id === w.data.id), 3000, "onConnect");
  const info = connected.find((x) => x.id === w.data.id);
  assert.match(info.remote, /^127\.0\.0\.1:\d+$/);
  assert.ok(info.at instanceof Date && Math.abs(info.at.getTime() - before) < 10000, "connectedAt near now");
  assert.equal(info.auth.authenticated, false);
  assert.ok(svc.ws.sockets.has(w.data.id), "service.ws.sockets holds the connection");
});

test("ws: handler return value is the reply (data), with correlation id and message type", async () => {
  const c = await client();
  const id = (await c.event("welcome")).data.id;
  assert.deepEqual(await c.request("echo", { a: [1, 2], s: "é" }), { id: "r-1", data: { a: [1, 2], s: "é" } });
  const who = await c.request("whoami");
  assert.equal(who.data.id, id);
  assert.equal(who.data.type, "whoami");
  assert.equal(who.data.cid, "r-2");
  const nul = await c.request("echo", null);
  assert.ok("data" in nul && nul.data === null, JSON.stringify(nul));
});

test("ws: a message without id gets no reply", async () => {
  const c = await client();
  await c.event("welcome");
  c.send({ type: "echo", data: "no reply wanted" });
  const r = await c.request("echo", "second");
  assert.equal(r.data, "second");
  assert.equal(c.messages.length, 0, `unexpected: ${JSON.stringify(c.messages)}`);
});

test("ws: thrown LinkdError -> error reply {type, message, code}; other errors -> INTERNAL_ERROR", async () => {
  const c = await client();
  const r = await c.request("fail");
  assert.deepEqual(r.error, { type: "FORBIDDEN", message: "nope", code: 403 });
  const b = await c.request("boom");
  assert.equal(b.error.type, "INTERNAL_ERROR");
  assert.ok(!JSON.stringify(b).includes("hidden"));
});

test("ws: onMessage catches types without a handler", async () => {
  const c = await client();
  const r = await c.request("some.unknown", { x: 1 });
  assert.deepEqual(r.data, { caught: "some.unknown", data: { x: 1 } });
});

test("ws: middleware runs in registration order, by pattern, and can wrap the result", async () => {
  const c = await client();
  assert.deepEqual((await c.request("mw.trace")).data, ["global", "mw.*"]);
  assert.deepEqual((await c.request("mw.wrap")).data, { wrapped: 5 });
});

test("ws: per-handler timeoutMs -> TIMEOUT error reply", async () => {
  const c = await client();
  const r = await c.request("slow", null, 3000);
  assert.equal(r.error?.type, "TIMEOUT");
});

test("ws: validate option transforms data or answers VALIDATION_ERROR", async () => {
  const c = await client();
  assert.deepEqual((await c.request("validated", { n: 21 })).data, { n: 42 });
  const bad = await c.request("validated", { n: "x" });
  assert.deepEqual([bad.error.type, bad.error.code, bad.error.message], ["VALIDATION_ERROR", 422, "n must be a number"]);
});

test("ws: group prefix and options: auth required, nested roles", async () => {
  const anon = await client();
  assert.equal((await anon.request("grp.secret")).error?.type, "UNAUTHORIZED");
  const user = await client(PATH, jwt(SECRET, { sub: "u-7", roles: ["user"] }));
  assert.deepEqual((await user.request("grp.secret")).data, { user: "u-7" });
  assert.equal((await user.request("grp.adm.only")).error?.type, "FORBIDDEN");
  const admin = await client(PATH, jwt(SECRET, { sub: "u-8", roles: ["admin"] }));
  assert.equal((await admin.request("grp.adm.only")).data, "admin ok");
});

test("ws: ctx.auth carries the JWT claims", async () => {
  const c = await client(PATH, jwt(SECRET, { sub: "u-9", preferred_username: "bea", roles: ["a", "b"], tenant_id: "t1" }));
  const who = await c.request("whoami");
  assert.deepEqual(who.data.auth, { userId: "u-9", username: "bea", roles: ["a", "b"], tenantId: "t1", authenticated: true });
});

test("ws: join/leave and ctx.rooms() follow linkd's state", async () => {
  const c = await client();
  assert.deepEqual((await c.request("room.join", { room: "r1" })).data, ["r1"]);
  assert.deepEqual((await c.request("room.join", { room: "r2" })).data, ["r1", "r2"]);
  assert.deepEqual((await c.request("room.leave", { room: "r1" })).data, ["r2"]);
});

test("ws: service.ws.roomCount(room) counts the members (one node: nodes 1 of 1)", async () => {
  const [a, b] = [await client(), await client()];
  assert.deepEqual((await a.request("room.count", { room: "counted" })).data, { members: 0, nodes: 1, nodesKnown: 1 });
  await a.request("room.join", { room: "counted" });
  await b.request("room.join", { room: "counted" });
  assert.deepEqual((await a.request("room.count", { room: "counted" })).data, { members: 2, nodes: 1, nodesKnown: 1 });
  await b.request("room.leave", { room: "counted" });
  assert.equal((await b.request("room.count", { room: "counted" })).data.members, 1);
});

test("ws: ctx.to(room).emit reaches members only; except() excludes connections", async () => {
  const [a, b, x] = [await client(), await client(), await client()];
  const ids = [];
  for (const c of [a, b, x]) ids.push((await c.event("welcome")).data.id);
  await a.request("room.join", { room: "talk" });
  await b.request("room.join", { room: "talk" });
  assert.equal((await a.request("room.say", { room: "talk", text: "hi all" })).data, true);
  assert.equal((await a.event("room.msg")).data.text, "hi all", "sender is in the room too");
  assert.deepEqual((await b.event("room.msg")).data, { from: ids[0], text: "hi all" });
  await a.request("room.say", { room: "talk", text: "not me", exceptSelf: true });
  assert.equal((await b.event("room.msg")).data.text, "not me");
  await b.request("room.say", { room: "talk", text: "nobody", except: [ids[0], ids[1]] });
  await a.request("room.say", { room: "talk", text: "marker" });
  assert.equal((await a.event("room.msg")).data.text, "marker", "excepted connection skipped the 'nobody' push");
  assert.equal((await b.event("room.msg")).data.text, "marker");
  assert.equal(x.messages.filter((m) => m.type === "room.msg").length, 0, "non-member got nothing");
});

test("ws: ctx.broadcast skips the sender; ctx.everyone reaches all (service.ws.to works outside handlers)", async () => {
  const [a, b] = [await client(), await client()];
  const ida = (await a.event("welcome")).data.id;
  await b.event("welcome");
  await a.request("bcast");
  assert.equal((await b.event("b")).data.from, ida);
  await a.request("all");
  assert.equal((await a.event("e")).data.from, ida);
  assert.equal((await b.event("e")).data.from, ida);
  assert.equal(a.messages.filter((m) => m.type === "b").length, 0);
  await a.request("room.join", { room: "outside" });
  await svc.ws.to("outside").emit("from.service", { n: 1 });
  assert.deepEqual((await a.event("from.service")).data, { n: 1 });
  await svc.ws.send(ida, "direct", 7);
  assert.equal((await a.event("direct")).data, 7);
});

test("ws: ctx.disconnect closes with the code; onDisconnect gets the rooms it was in", async () => {
  const c = await client();
  const id = (await c.event("welcome")).data.id;
  await c.request("room.join", { room: "d1" });
  await c.request("room.join", { room: "d2" });
  c.send({ type: "bye", id: "x" });
  const closed = await c.waitClosed();
  assert.equal(closed.code, 4001);
  assert.equal(closed.reason, "bye now");
  const d = await waitFor(() => disconnected.find((x) => x.id === id), 3000, "onDisconnect");
  assert.deepEqual(d.rooms.sort(), ["d1", "d2"]);
  assert.ok(!svc.ws.sockets.has(id), "removed from service.ws.sockets");
});

test("ws: commands on an unknown connection are rejected with linkd's error", async () => {
  await assert.rejects(svc.ws.join("99999.9", "r"), (e) => e.status >= 400 && e.type.length > 0);
  await assert.rejects(svc.ws.rooms("99999.9"), (e) => e.status >= 400);
});

test("ws: a type with no handler and no catch-all -> NOT_FOUND error reply", async () => {
  const other = createService({ name: "bare", socketPath: linkd.socket, logger: memoryLogger(), websocket: { enabled: true, path: "/ws/bare" } });
  services.push(other);
  other.ws.on("known", () => 1);
  await other.start();
  const c = await client("/ws/bare");
  const r = await c.request("unknown.type");
  assert.equal(r.error?.type, "NOT_FOUND");
  assert.equal((await c.request("known")).data, 1);
});

test("ws: service restart: connections and rooms survive, EXISTING rebuilds service.ws.sockets", async () => {
  const [a, b] = [await client(), await client()];
  const ida = (await a.event("welcome")).data.id;
  const idb = (await b.event("welcome")).data.id;
  await a.request("room.join", { room: "keep" });
  await b.request("room.join", { room: "keep" });
  await svc.stop();
  // while the service is away linkd answers for it
  const down = await a.request("echo", 1);
  assert.equal(down.error?.type, "SERVICE_UNAVAILABLE");
  existing = [];
  svc = buildService();
  await svc.start();
  await waitFor(() => svc.ws.sockets.has(ida) && svc.ws.sockets.has(idb), 5000, "EXISTING events");
  assert.deepEqual([...svc.ws.sockets.get(ida).rooms], ["keep"]);
  assert.ok(existing.some((e) => e.id === ida && e.rooms.includes("keep")), "onExisting called with rooms");
  await a.request("room.say", { room: "keep", text: "after restart" });
  assert.equal((await b.event("room.msg")).data.text, "after restart");
});

test("ws: linkd restart: the service re-registers and new connections work", async () => {
  linkd = await linkd.restart();
  await waitFor(() => svc.connected, 10000, "re-registration");
  const c = await client();
  await c.event("welcome");
  assert.equal((await c.request("echo", "back")).data, "back");
});

test("ws: large messages (split across socket reads) round-trip intact", async () => {
  const c = await client();
  const big = "x".repeat(60000);
  const many = Array.from({ length: 20 }, (_, i) => c.request("echo", { i, big }, 10000));
  const rs = await Promise.all(many);
  assert.ok(rs.every((r, i) => r.data?.i === i && r.data.big.length === 60000));
});

test("ws: raw path: frames reach onMessage as they are, sendRaw answers without envelope", async () => {
  const raw = createService({ name: "rawsvc", socketPath: linkd.socket, logger: memoryLogger(), websocket: { enabled: true, path: "/ws/raw", raw: true } });
  services.push(raw);
  raw.ws.onMessage(async (ctx) => {
    await ctx.sendRaw(typeof ctx.message === "string" ? `echo:${ctx.message}` : Buffer.concat([Buffer.from([0]), ctx.message]));
  });
  await raw.start();
  const c = await client("/ws/raw");
  c.ws.send("not json at all");
  assert.deepEqual(await c.next(), { unparsed: "echo:not json at all" });
  c.ws.send(Buffer.from([1, 2, 3]));
  const bin = await c.next();
  assert.ok(Buffer.isBuffer(bin), "binary frame back");
  assert.deepEqual([...bin], [0, 1, 2, 3]);
});

test("ws: websocket options reach linkd (maxConnectionsPerUser, authRequired)", async () => {
  const capped = createService({
    name: "capped",
    socketPath: linkd.socket,
    logger: memoryLogger(),
    websocket: { enabled: true, path: "/ws/capped", maxConnectionsPerUser: 2, authRequired: true },
  });
  services.push(capped);
  await capped.start();
  await assert.rejects(client("/ws/capped"), (e) => e.status === 401, "no token: 401 (authRequired)");
  const token = jwt(SECRET, { sub: "cap-user" });
  await client("/ws/capped", token);
  await client("/ws/capped", token);
  await assert.rejects(client("/ws/capped", token), (e) => e.status === 429, "third connection of one user refused");
  await client("/ws/capped", jwt(SECRET, { sub: "other-user" }));
});

test("ws: a message sent right after connecting waits for onConnect to finish", async () => {
  const c = await Client.connect(wsUrl());
  clients.push(c);
  const r = await c.request("whoami");
  assert.equal(r.data.ready, true, "onConnect had finished when the handler ran");
});
