// The SDK's HTTP half against a real linkd: actions, contexts, error
// mapping, refusals, reconnect after linkd restarts.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import sdk from "linkd-sdk";
import { jwt, memoryLogger, startLinkd, waitFor } from "./helpers.mjs";

const { createService, reply, NotFoundError, UnauthorizedError, ForbiddenError, ValidationError } = sdk;
const SECRET = "sdk-test-secret";

let linkd;
let svc;
const services = [];

function newService(opts) {
  const s = createService({ logger: memoryLogger(), reconnect: { initialDelayMs: 50, maxDelayMs: 300 }, ...opts, socketPath: linkd.socket });
  services.push(s);
  return s;
}

async function get(path, init = {}) {
  const r = await fetch(linkd.url + path, { ...init, signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: r.status, headers: r.headers, text, json };
}

before(async () => {
  linkd = await startLinkd(["--jwt-secret", SECRET]);
  svc = newService({ name: "users", version: "1.2.3", namespace: "test" });
  svc.action("stats", { route: "/users/stats" }, () => ({ which: "stats" }));
  svc.action("get", { route: "/users/:id" }, (ctx) => {
    if (ctx.params.id === "404") throw new NotFoundError("user 404 not found");
    return { which: "get", id: ctx.params.id, query: ctx.query, method: ctx.method, path: ctx.path, route: ctx.route };
  });
  svc.action("create", { route: "/users", method: "POST" }, (ctx) => {
    const b = ctx.body;
    if (!b || typeof b.name !== "string") throw new ValidationError("name is required", { field: "name" });
    ctx.setStatus(201);
    ctx.setHeader("X-Created", "yes");
    return { created: b.name, contentType: ctx.headers["content-type"], host: ctx.headers["host"] };
  });
  svc.action("echo", { route: "/echo", method: "*" }, (ctx) => ({
    method: ctx.method,
    text: typeof ctx.body === "string" ? ctx.body : null,
    custom: ctx.headers["x-custom"],
    remote: ctx.remoteAddress,
  }));
  svc.action("nothing", { route: "/nothing" }, () => undefined);
  svc.action("boom", { route: "/boom" }, () => {
    throw new Error("secret internals");
  });
  svc.action("e401", { route: "/e401" }, () => {
    throw new UnauthorizedError("who are you");
  });
  svc.action("e403", { route: "/e403" }, () => {
    throw new ForbiddenError("not you");
  });
  svc.action("page", { route: "/page.html" }, () => reply("<h1>hi</h1>", { contentType: "text/html; charset=utf-8" }));
  svc.action("me", { route: "/me", auth: true }, (ctx) => ({ userId: ctx.user.userId, username: ctx.user.username, roles: ctx.user.roles }));
  svc.action("admin", { route: "/admin", roles: ["admin"] }, () => ({ admin: true }));
  svc.action("slow", { route: "/slow" }, async () => {
    await new Promise((r) => setTimeout(r, 200));
    return { slow: true };
  });
  await svc.start();
});

after(async () => {
  for (const s of services) await s.stop();
  await linkd?.stop();
});

test("http: start() resolves once linkd accepted the registration", () => {
  assert.equal(svc.connected, true);
  assert.ok(svc.linkdVersion.length > 0, "RegisterResult.linkd_version recorded");
});

test("http: returned value is a JSON 200 with params, query, method and route", async () => {
  const r = await get("/users/42?sort=name&x=1");
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") || "", /application\/json/);
  assert.deepEqual(r.json, { which: "get", id: "42", query: { sort: "name", x: "1" }, method: "GET", path: "/users/42", route: "/users/:id" });
});

test("http: a static segment beats a parameter (/users/stats)", async () => {
  const r = await get("/users/stats");
  assert.deepEqual([r.status, r.json], [200, { which: "stats" }]);
});

test("http: JSON body parsed; setStatus and setHeader honoured; headers forwarded", async () => {
  const r = await get("/users", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "ana" }) });
  assert.equal(r.status, 201);
  assert.equal(r.headers.get("x-created"), "yes");
  assert.equal(r.json.created, "ana");
  assert.equal(r.json.contentType, "application/json");
  assert.equal(r.json.host, `127.0.0.1:${linkd.port}`);
});

test("http: text body, any-method route, custom header and remote address", async () => {
  const r = await get("/echo", { method: "PUT", headers: { "content-type": "text/plain", "x-custom": "abc" }, body: "hello" });
  assert.equal(r.status, 200);
  assert.equal(r.json.method, "PUT");
  assert.equal(r.json.text, "hello");
  assert.equal(r.json.custom, "abc");
  assert.match(r.json.remote, /^127\.0\.0\.1:\d+$/);
});

test("http: handler returning nothing gives 200 with null", async () => {
  const r = await get("/nothing");
  assert.deepEqual([r.status, r.text], [200, "null"]);
});

test("http: NotFoundError -> 404 with the SPEC error body", async () => {
  const r = await get("/users/404");
  assert.equal(r.status, 404);
  assert.deepEqual(r.json, { error: { type: "NOT_FOUND", message: "user 404 not found" } });
});

test("http: UnauthorizedError / ForbiddenError -> 401 / 403", async () => {
  const a = await get("/e401");
  const b = await get("/e403");
  assert.deepEqual([a.status, a.json.error.type, a.json.error.message], [401, "UNAUTHORIZED", "who are you"]);
  assert.deepEqual([b.status, b.json.error.type, b.json.error.message], [403, "FORBIDDEN", "not you"]);
});

test("http: ValidationError -> 422 VALIDATION_ERROR with details; bad JSON -> 400", async () => {
  const r = await get("/users", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
  assert.equal(r.status, 422);
  assert.equal(r.json.error.type, "VALIDATION_ERROR");
  assert.equal(r.json.error.message, "name is required");
  assert.deepEqual(r.json.error.details, { field: "name" });
  const b = await get("/users", { method: "POST", headers: { "content-type": "application/json" }, body: "{oops" });
  assert.equal(b.status, 400);
  assert.equal(b.json.error.type, "BAD_REQUEST");
});

test("http: any other thrown error -> 500 INTERNAL_ERROR without its message", async () => {
  const r = await get("/boom");
  assert.equal(r.status, 500);
  assert.equal(r.json.error.type, "INTERNAL_ERROR");
  assert.ok(!r.text.includes("secret internals"));
});

test("http: reply() sends non-JSON bodies with their content type", async () => {
  const r = await get("/page.html");
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type"), /^text\/html/);
  assert.equal(r.text, "<h1>hi</h1>");
});

test("http: route with auth: 401 without a token, user context with one", async () => {
  const r = await get("/me");
  assert.equal(r.status, 401);
  const token = jwt(SECRET, { sub: "u-1", preferred_username: "ana", roles: ["user"] });
  const ok = await get("/me", { headers: { authorization: `Bearer ${token}` } });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json, { userId: "u-1", username: "ana", roles: ["user"] });
});

test("http: route with roles: 403 without the role, 200 with it", async () => {
  const user = jwt(SECRET, { sub: "u-2", roles: ["user"] });
  const admin = jwt(SECRET, { sub: "u-3", roles: ["admin"] });
  const a = await get("/admin", { headers: { authorization: `Bearer ${user}` } });
  const b = await get("/admin", { headers: { authorization: `Bearer ${admin}` } });
  assert.deepEqual([a.status, b.status], [403, 200]);
});

test("http: concurrent requests are all answered", async () => {
  const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => get(i % 2 ? "/slow" : `/users/${i}`)));
  assert.ok(rs.every((r) => r.status === 200));
  assert.deepEqual(rs.filter((r) => r.json.slow).length, 15);
});

test("http: a conflicting registration makes start() reject with linkd's reason", async () => {
  const intruder = newService({ name: "intruder" });
  intruder.action("x", { route: "/users/:id" }, () => 1);
  await assert.rejects(intruder.start(), (e) => e.type === "REGISTRATION_REFUSED" && e.message.length > 0);
  const r = await get("/users/7");
  assert.equal(r.json.id, "7", "the original owner still serves the route");
});

test("http: the service reconnects and registers again when linkd restarts", async () => {
  let registered = 0;
  svc.on("registered", () => registered++);
  linkd = await linkd.restart();
  await waitFor(() => registered >= 1 && svc.connected, 10000, "re-registration");
  const r = await get("/users/9");
  assert.deepEqual([r.status, r.json.id], [200, "9"]);
});

test("http: linkd answers 503 while the service is down, and the route comes back", async () => {
  const tmp = newService({ name: "flaky" });
  tmp.action("f", { route: "/flaky" }, () => ({ up: true }));
  await tmp.start();
  assert.equal((await get("/flaky")).status, 200);
  await tmp.stop();
  const down = await get("/flaky");
  assert.ok([503, 404].includes(down.status), `got ${down.status}`);
  const again = newService({ name: "flaky" });
  again.action("f", { route: "/flaky" }, () => ({ up: 2 }));
  await again.start();
  const r = await get("/flaky");
  assert.deepEqual([r.status, r.json], [200, { up: 2 }]);
});
