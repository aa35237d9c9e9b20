// The chat example (examples/chat) as a client sees it through a real
// linkd: HTTP routes, rooms, messages, typing, presence, validation,
// history in SQLite across a service restart.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { Client, ROOT, startLinkd, tmpDir, waitFor } from "./helpers.mjs";

let linkd;
let chat;
const dir = tmpDir("chat");
const clients = [];

function startChat() {
  const log = fs.openSync(path.join(dir, "chat.log"), "a");
  const p = spawn(process.execPath, [path.join(ROOT, "examples/chat/dist/main.js")], {
    env: { ...process.env, LINKD_SOCKET: linkd.socket, CHAT_DB: path.join(dir, "chat.db"), LINKD_SDK_LOG: "warn" },
    stdio: ["ignore", log, log],
  });
  fs.closeSync(log);
  p.exited = new Promise((r) => p.on("exit", r));
  return p;
}

async function ready() {
  await waitFor(async () => {
    const r = await fetch(linkd.url + "/chat/ready", { signal: AbortSignal.timeout(1000) });
    return r.ok && (await r.json()).ready === true;
  }, 15000, "the chat service to register");
}

async function get(p) {
  const r = await fetch(linkd.url + p, { signal: AbortSignal.timeout(5000) });
  return { status: r.status, type: r.headers.get("content-type") || "", text: await r.text() };
}

async function user(name) {
  const c = await Client.connect(`ws://127.0.0.1:${linkd.port}/ws/chat`);
  clients.push(c);
  const me = await c.request("chat.identify", { name });
  assert.equal(me.data?.username, name, JSON.stringify(me));
  c.me = me.data;
  return c;
}

before(async () => {
  linkd = await startLinkd();
  chat = startChat();
  await ready();
});

after(async () => {
  for (const c of clients) c.close();
  chat?.kill("SIGTERM");
  await Promise.race([chat?.exited, new Promise((r) => setTimeout(r, 3000))]);
  chat?.kill("SIGKILL");
  await linkd?.stop();
});

test("chat: HTTP health, ready and live routes answer through linkd", async () => {
  for (const p of ["/chat/health", "/chat/ready", "/chat/live"]) {
    const r = await get(p);
    assert.equal(r.status, 200, p);
    assert.match(r.type, /application\/json/);
  }
  assert.equal(JSON.parse((await get("/chat/health")).text).status, "healthy");
});

test("chat: the page, its script and its icon are served through linkd", async () => {
  const page = await get("/");
  assert.equal(page.status, 200);
  assert.match(page.type, /text\/html/);
  assert.match(page.text, /<script src="\/chat\.js">/);
  const js = await get("/chat.js");
  assert.match(js.type, /javascript/);
  assert.match(js.text, /\/ws\/chat/);
  // the page links its icon (no /favicon.ico 404 on every load), and the icon is served
  assert.match(page.text, /<link rel="icon" href="\/favicon\.svg"/);
  const icon = await get("/favicon.svg");
  assert.equal(icon.status, 200);
  assert.match(icon.type, /^image\/svg\+xml/);
  assert.match(icon.text, /^<svg /);
});

test("chat: identify announces presence.online to others", async () => {
  const a = await user("ann");
  const bP = user("ben");
  const on = await a.next((m) => m.type === "presence.online" && m.data.username === "ben", 5000, "presence.online ben");
  await bP;
  assert.ok(on.data.userId.length > 0);
  const list = await a.request("chat.online");
  assert.ok(list.data.online.some((u) => u.username === "ben"));
});

test("chat: validation and membership errors", async () => {
  const c = await user("val");
  const bad = await c.request("chat.join", { room: "no spaces allowed" });
  assert.equal(bad.error?.type, "VALIDATION_ERROR");
  const notMember = await c.request("chat.send", { room: "elsewhere", message: "hi" });
  assert.equal(notMember.error?.type, "FORBIDDEN");
  const empty = await c.request("chat.send", { room: "elsewhere", message: "" });
  assert.equal(empty.error?.type, "VALIDATION_ERROR");
  assert.equal((await c.request("chat.identify", { name: "" })).error?.type, "VALIDATION_ERROR");
});

test("chat: join, send, typing, leave between two users", async () => {
  const a = await user("amy");
  const b = await user("bob");
  const ja = await a.request("chat.join", { room: "r1" });
  assert.deepEqual([ja.data.room, ja.data.history], ["r1", []]);
  const jb = await b.request("chat.join", { room: "r1" });
  assert.deepEqual(jb.data.members.map((m) => m.username).sort(), ["amy", "bob"]);
  assert.equal((await a.event("chat.user_joined")).data.username, "bob");

  b.send({ type: "chat.typing", data: { room: "r1", typing: true } });
  const t = await a.event("chat.typing");
  assert.deepEqual([t.data.username, t.data.typing], ["bob", true]);

  const sent = await b.request("chat.send", { room: "r1", message: "hello amy" });
  assert.equal(sent.data.success, true);
  const m = await a.event("chat.message");
  assert.deepEqual([m.data.username, m.data.content, m.data.room, m.data.id], ["bob", "hello amy", "r1", sent.data.id]);
  assert.equal((await b.event("chat.message")).data.content, "hello amy", "the sender gets its message too");
  assert.equal(b.messages.filter((x) => x.type === "chat.typing").length, 0, "no typing echo to the typer");

  await b.request("chat.leave", { room: "r1" });
  assert.equal((await a.event("chat.user_left")).data.username, "bob");
  assert.deepEqual((await b.request("chat.rooms")).data.rooms, []);
  assert.deepEqual((await a.request("chat.rooms")).data.rooms, ["r1"]);
});

test("chat: history over WebSocket and over HTTP", async () => {
  const c = await user("hist");
  await c.request("chat.join", { room: "h1" });
  for (let i = 1; i <= 3; i++) await c.request("chat.send", { room: "h1", message: `m${i}` });
  const h = await c.request("chat.history", { room: "h1", limit: 2 });
  assert.deepEqual(h.data.messages.map((m) => m.content), ["m2", "m3"]);
  const r = JSON.parse((await get("/chat/rooms/h1/messages")).text);
  assert.deepEqual(r.messages.map((m) => m.content), ["m1", "m2", "m3"]);
  const rooms = JSON.parse((await get("/chat/rooms")).text).rooms;
  assert.ok(rooms.some((x) => x.room === "h1" && x.messages === 3 && x.members === 1));
  const again = await (await user("late")).request("chat.join", { room: "h1" });
  assert.deepEqual(again.data.history.map((m) => m.content), ["m1", "m2", "m3"]);
});

test("chat: closing a connection tells the room (user_left) and everyone (presence.offline)", async () => {
  const a = await user("stay");
  const b = await user("go");
  await a.request("chat.join", { room: "p1" });
  await b.request("chat.join", { room: "p1" });
  b.close();
  const left = await a.next((m) => m.type === "chat.user_left" && m.data.username === "go", 5000, "user_left go");
  assert.equal(left.data.room, "p1");
  await a.next((m) => m.type === "presence.offline" && m.data.username === "go", 5000, "presence.offline go");
});

test("chat: service restart keeps history (SQLite) and the connected clients", async () => {
  const a = await user("keep1");
  const b = await user("keep2");
  await a.request("chat.join", { room: "k1" });
  await b.request("chat.join", { room: "k1" });
  await a.request("chat.send", { room: "k1", message: "before restart" });
  chat.kill("SIGTERM");
  await chat.exited;
  chat = startChat();
  await ready();
  const r = JSON.parse((await get("/chat/rooms/k1/messages")).text);
  assert.deepEqual(r.messages.map((m) => m.content), ["before restart"]);
  // the connections and their rooms lived in linkd: a send after the restart reaches b
  const sent = await a.request("chat.send", { room: "k1", message: "after restart" }, 8000);
  assert.equal(sent.data?.success, true, JSON.stringify(sent));
  await b.next((m) => m.type === "chat.message" && m.data.content === "after restart", 5000, "message after restart");
});

test("chat: started before linkd, it says once at info that it waits for linkd's socket, then connects and registers", async (t) => {
  const early = tmpDir("chat-early");
  const socket = path.join(early, "linkd.sock");
  const logFile = path.join(early, "chat.log");
  const out = fs.openSync(logFile, "a");
  const p = spawn(process.execPath, [path.join(ROOT, "examples/chat/dist/main.js")], {
    // debug: the retries show, so the test can tell "once" from "not yet again"
    env: { ...process.env, LINKD_SOCKET: socket, CHAT_DB: path.join(early, "chat.db"), LINKD_SDK_LOG: "debug" },
    stdio: ["ignore", out, out],
  });
  fs.closeSync(out);
  const exited = new Promise((r) => p.on("exit", r));
  let second;
  t.after(async () => {
    p.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    p.kill("SIGKILL");
    await second?.stop();
  });
  const log = () => fs.readFileSync(logFile, "utf8");
  const waiting = () => log().split("\n").filter((l) => l.includes(` info [chat] waiting for linkd's socket at ${socket}`));
  const retries = () => log().split("\n").filter((l) => l.includes(" debug [chat] linkd not reachable")).length;
  await waitFor(() => retries() >= 3, 10000, "three quiet retries: " + log().slice(-300));
  assert.equal(waiting().length, 1, "said once, however many retries: " + log());
  assert.doesNotMatch(log(), / (warn|error) /, "quiet retries");
  second = await startLinkd([], { dir: early });
  await waitFor(() => / info \[chat\] registered with linkd/.test(log()), 15000, "registration: " + log().slice(-300));
  assert.match(log(), new RegExp(` info \\[chat\\] connected to linkd at ${socket.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`));
  assert.equal(waiting().length, 1);
  const r = await fetch(second.url + "/chat/ready", { signal: AbortSignal.timeout(5000) });
  assert.equal((await r.json()).ready, true);
});
