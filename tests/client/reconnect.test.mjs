// Reconnecting against a real linkd: after linkd restarts (server.shutdown,
// close 1001, the path back once the service registers again), after the
// service closes the connection, with a token function that gives a new
// token each time (and a refused one first); in-flight requests fail with
// DISCONNECTED; an onClose listener can stop it.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { connect } from "linkd-client";
import { cleanup, jwt, nextEvent, startLinkd, startService, waitFor } from "./helpers.mjs";

const SECRET = "client-reconnect-secret";
const clients = [];
const services = [];
const linkds = [];
const fast = { initialDelayMs: 50, maxDelayMs: 400 };

function client(linkd, opts = {}, p = "/ws/c") {
  const c = connect(linkd.ws(p), { reconnect: fast, requestTimeoutMs: 5000, ...opts });
  clients.push(c);
  return c;
}

after(() => cleanup({ clients, services, linkds }));

test("reconnect: linkd restarts — server.shutdown pushed, close 1001, reconnecting, open again once the service is back; onRecover says unsupported (no recovery on this path)", async () => {
  let linkd = await startLinkd();
  linkds.push(linkd);
  const svc = await startService(linkd);
  services.push(svc);
  const c = client(linkd);
  const states = [];
  c.onStateChange((s) => states.push(s));
  assert.equal(await c.request("echo", "before"), "before");
  const shutdown = nextEvent((f) => c.on("server.shutdown", f), 10000, "server.shutdown");
  const closed = nextEvent((f) => c.onClose(f), 10000, "onClose");
  const reopened = nextEvent((f) => c.onOpen(f), 20000, "onOpen after the restart");
  const recovered = nextEvent((f) => c.onRecover(f), 20000, "onRecover");
  linkd = await linkd.restart();
  linkds.push(linkd);
  await shutdown;
  const ci = await closed;
  assert.deepEqual([ci.code, ci.willReconnect], [1001, true]);
  assert.deepEqual(await reopened, { reconnected: true });
  assert.deepEqual(await recovered, { recovered: false, reason: "unsupported" });
  assert.equal(await c.request("echo", "after"), "after");
  assert.deepEqual(states.slice(0, 2), ["open", "reconnecting"]);
  assert.equal(states.at(-1), "open");
  c.close();
});

test("reconnect: the service closes the connection (code 4000) — onClose has its code and reason, a new connection follows", async () => {
  const linkd = await startLinkd();
  linkds.push(linkd);
  const svc = await startService(linkd);
  services.push(svc);
  const c = client(linkd);
  const first = await c.request("whoami");
  const closed = nextEvent((f) => c.onClose(f), 5000, "onClose");
  const reopened = nextEvent((f) => c.onOpen(f), 5000, "onOpen");
  assert.deepEqual(await c.request("kick", { code: 4000, reason: "go away" }), { kicking: true });
  assert.deepEqual(await closed, { code: 4000, reason: "go away", willReconnect: true });
  await reopened;
  const second = await c.request("whoami");
  assert.notEqual(second.conn, first.conn);
  assert.equal(c.state, "open");
  c.close();
});

test("reconnect: an onClose listener that calls close() stops reconnecting (e.g. on a code the application treats as final)", async () => {
  const linkd = await startLinkd();
  linkds.push(linkd);
  const svc = await startService(linkd);
  services.push(svc);
  const c = client(linkd);
  c.onClose((i) => {
    if (i.code === 4001) c.close();
  });
  await c.request("whoami");
  const n = svc.connects.length;
  await c.request("kick", { code: 4001, reason: "banned" });
  await waitFor(() => c.state === "closed", 5000, "state closed");
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(svc.connects.length, n, "no new connection");
});

test("reconnect: the token function is called before every attempt — a refused token (401) is replaced, and after a drop the new token's user is the one linkd sees", async () => {
  const linkd = await startLinkd(["--jwt-secret", SECRET]);
  linkds.push(linkd);
  const svc = await startService(linkd, { path: "/ws/auth", websocket: { authRequired: true } });
  services.push(svc);
  const issued = [];
  const token = async () => {
    const n = issued.length;
    // the first token is signed with the wrong secret: linkd answers the upgrade 401
    const t = n === 0 ? jwt("wrong-secret", { sub: "nobody" }) : jwt(SECRET, { sub: `user-${n}` });
    issued.push(t);
    return t;
  };
  const c = client(linkd, { token }, "/ws/auth");
  const me1 = await c.request("whoami");
  assert.equal(me1.user, "user-1");
  assert.equal(issued.length, 2, "refused once, then a new token");
  const reopened = nextEvent((f) => c.onOpen(f), 5000, "onOpen");
  await c.request("kick", { code: 4000 });
  await reopened;
  const me2 = await c.request("whoami");
  assert.equal(me2.user, "user-2");
  assert.equal(issued.length, 3);
  c.close();
});

test("reconnect: a request in flight when the connection drops fails with DISCONNECTED and is not sent again", async () => {
  const linkd = await startLinkd();
  linkds.push(linkd);
  const svc = await startService(linkd);
  services.push(svc);
  const c = client(linkd);
  await c.request("whoami");
  const inflight = c.request("sleep", { ms: 800 });
  await c.request("kick", { code: 4000 });
  const e = await inflight.catch((x) => x);
  assert.deepEqual([e.type, e.code], ["DISCONNECTED", 0]);
  assert.match(e.message, /^sleep: /);
  await c.ready(5000);
  assert.equal(await c.request("echo", "next"), "next");
  assert.equal(svc.seen.filter((m) => m.type === "sleep").length, 1, "sleep was sent once");
  c.close();
});
