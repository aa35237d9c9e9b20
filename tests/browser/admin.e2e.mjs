// End-to-end: linkd's admin console (--admin-listen, issue 14) in Debian's
// chromium (headless). linkd runs with a JWT secret and the test service
// (tests/svc.py, path /ws/chat); WebSocket clients live in a second page
// (about:blank) so the test can watch what they receive. The console asks
// for a token (401), refuses one without the admin role (403), then with an
// admin token shows the figures and they move: the connection count follows
// clients coming, rooms and services appear, the charts get points and the
// messages sent. Actions: a push to a room reaches exactly its members, a
// disconnect closes the client with the code and reason given, a cancelled
// confirmation does nothing. Names are shown as text (no markup injected).
// 400 px: no horizontal scroll. No console errors once the token is in.
// Screenshots go to OUT_DIR.
//   node admin.e2e.mjs LINKD_URL ADMIN_URL JWT_SECRET OUT_DIR
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, adminUrl, secret, outDir] = process.argv.slice(2);
const T = "t_admin_browser";
const STEP_MS = 15000;
let failedEarlier = null;

async function step(name, fn, { gate = true } = {}) {
  if (failedEarlier) {
    console.log(`FAIL: ${T}: ${name} — not run: "${failedEarlier}" failed`);
    return;
  }
  try {
    await fn();
    console.log(`PASS: ${T}: ${name}`);
  } catch (err) {
    if (gate) failedEarlier = name;
    console.log(`FAIL: ${T}: ${name} — ${String(err?.message ?? err).split("\n")[0].slice(0, 300)}`);
  }
}

const b64 = (x) => Buffer.from(x).toString("base64url");
function jwt(claims) {
  const h = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const p = b64(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 900, ...claims }));
  return `${h}.${p}.${crypto.createHmac("sha256", secret).update(`${h}.${p}`).digest("base64url")}`;
}
const ADMIN = jwt({ sub: "u-root", preferred_username: "root", roles: ["admin"] });
const USER = jwt({ sub: "u-ann", roles: ["user"] });
const BOB = jwt({ sub: "u-bob", roles: ["user"] });

const text = (page, sel) => page.evaluate((s) => document.querySelector(s)?.textContent ?? "", sel);
async function waitFor(page, fn, arg, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_MS, polling: 100 });
  } catch {
    throw new Error(`timed out waiting for ${what}`);
  }
}
const tileValue = (page, id) => text(page, `#k-${id} .v`);
async function waitTile(page, id, want) {
  await waitFor(page, ([i, w]) => document.querySelector(`#k-${i} .v`)?.textContent === w, [id, want], `tile ${id} = ${want}`).catch(async (e) => {
    throw new Error(`${e.message} (shows "${await tileValue(page, id)}")`);
  });
}

// ---- clients: WebSockets in a blank page, with the test service's puppet commands
async function openClients(page, n, wsUrl, tokens = []) {
  return page.evaluate(
    async ([n, wsUrl, tokens]) => {
      let seq = 0;
      window.call = (ws, type, data) =>
        new Promise((resolve, reject) => {
          const id = `r${++seq}`;
          ws.waiting[id] = resolve;
          ws.send(JSON.stringify({ type, data, id }));
          setTimeout(() => reject(new Error(`no reply to ${type}`)), 10000);
        });
      window.socks = window.socks || [];
      const ids = [];
      for (let i = 0; i < n; i++) {
        const ws = new WebSocket(tokens[i] ? `${wsUrl}?token=${tokens[i]}` : wsUrl);
        ws.got = [];
        ws.waiting = {};
        ws.closed = null;
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          if (m.id && ws.waiting[m.id]) {
            ws.waiting[m.id](m);
            delete ws.waiting[m.id];
          } else ws.got.push(m);
        };
        ws.onclose = (e) => (ws.closed = { code: e.code, reason: e.reason });
        await new Promise((ok, bad) => {
          ws.onopen = ok;
          ws.onerror = () => bad(new Error("WebSocket failed"));
        });
        ws.cid = (await window.call(ws, "whoami")).data.conn;
        window.socks.push(ws);
        ids.push(ws.cid);
      }
      return ids;
    },
    [n, wsUrl, tokens],
  );
}
const join = (page, i, room) => page.evaluate(([i, room]) => window.call(window.socks[i], "do.join", { room }), [i, room]);

let browser;
const errors = [];          // console errors and page errors once the token is in
const before = [];          // console errors before it (the 401/403 answers)
let tokenIn = false;
let admin, clients, ids = [];
try {
  await step("chromium starts headless (Debian's /usr/bin/chromium)", async () => {
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      headless: true,
      timeout: 30000,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
    });
  });

  await step("the console page loads (GET / on the admin port) and asks for a token (401)", async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    admin = await ctx.newPage();
    admin.on("console", (m) => {
      if (m.type() === "error") (tokenIn ? errors : before).push(`console: ${m.text()}`);
    });
    admin.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
    admin.on("requestfailed", (r) => errors.push(`${r.url()} failed (${r.failure()?.errorText})`));
    const resp = await admin.goto(adminUrl + "/", { timeout: STEP_MS });
    if (!resp || resp.status() !== 200) throw new Error(`GET / -> ${resp?.status()}`);
    await waitFor(admin, () => !document.querySelector("#auth").hidden && /JWT/.test(document.querySelector("#amsg").textContent), null, "the token prompt");
    const st = await text(admin, "#st");
    if (!/token/.test(st)) throw new Error(`status shows "${st}"`);
  });

  await step("without a token the page stops asking (no refusal a second in linkd's log)", async () => {
    let polls = 0;
    const count = (r) => (polls += r.url().endsWith("/api/state"));
    admin.on("request", count);
    await admin.waitForTimeout(2500);
    admin.off("request", count);
    if (polls) throw new Error(`${polls} more requests to /api/state in 2.5 s`);
  });

  await step("a token without the admin role: the page says so (403)", async () => {
    await admin.fill("#tok", USER);
    await admin.click("#authf button.p");
    await waitFor(admin, () => /403/.test(document.querySelector("#amsg").textContent), null, "the 403 message");
  });

  await step("an admin token: the console goes live, the prompt goes away", async () => {
    await admin.fill("#tok", "Bearer " + ADMIN);   // a pasted "Bearer " prefix is dropped
    await admin.click("#authf button.p");
    await waitFor(admin, () => document.querySelector("#st").textContent === "live" && document.querySelector("#auth").hidden, null, "live");
    tokenIn = true;
    const kept = await admin.evaluate(() => sessionStorage.getItem("linkdToken"));
    if (kept !== ADMIN) throw new Error("the token is not kept in sessionStorage");
  });

  await step("the token survives a reload of the tab (sessionStorage)", async () => {
    await admin.reload({ timeout: STEP_MS });
    await waitFor(admin, () => document.querySelector("#st").textContent === "live", null, "live after the reload");
  });

  await step("figures appear: version, service chat with its instance and routes, no connection yet", async () => {
    await waitFor(admin, () => /chat/.test(document.querySelector("#svcs").textContent), null, "the chat service");
    const svcs = await text(admin, "#svcs");
    for (const want of ["chat", "/ws/chat", "admin-e2e-1", "ready", "GET /chat/hello"]) {
      if (!svcs.includes(want)) throw new Error(`services show no "${want}": ${svcs.slice(0, 200)}`);
    }
    await waitTile(admin, "ws", "0");
    const ver = await text(admin, "#ver");
    if (!/^v\d/.test(ver)) throw new Error(`version "${ver}"`);
    const lim = await text(admin, "#lim");
    if (!/connections10,000/.test(lim.replace(/\s/g, ""))) throw new Error(`limits: ${lim.slice(0, 120)}`);
  });

  await step("clients connect and join rooms: the connection count, rooms and tables follow", async () => {
    clients = await (await browser.newContext()).newPage();
    clients.on("pageerror", (e) => errors.push(`clients page: ${e.message}`));
    const wsUrl = url.replace(/^http/, "ws") + "/ws/chat";
    ids = await openClients(clients, 3, wsUrl, [USER, USER, BOB]);
    await waitTile(admin, "ws", "3");
    for (let i = 0; i < 3; i++) await join(clients, i, "lobby");
    await join(clients, 2, "side");
    await waitTile(admin, "rooms", "2");
    await waitTile(admin, "mem", "4");
    await waitFor(admin, () => /lobby\s*3/.test(document.querySelector("#rooms").textContent.replace(/\s+/g, " ")), null, "lobby with 3 members");
    const conns = await text(admin, "#conns");
    for (const id of ids) if (!conns.includes(id)) throw new Error(`connection ${id} not listed`);
    const paths = await text(admin, "#paths");
    if (!/\/ws\/chat\s*3/.test(paths)) throw new Error(`per path: "${paths}"`);
    const users = (await text(admin, "#users")).replace(/\s+/g, " ");
    if (!/u-ann\s*2/.test(users) || !/u-bob\s*1/.test(users)) throw new Error(`top users: "${users}"`);
    ids.push(...(await openClients(clients, 1, wsUrl)));
    await waitTile(admin, "ws", "4");
    await waitFor(admin, () => /101 × 4/.test(document.querySelector("#http").textContent), null, "101 × 4 among the HTTP statuses");
  });

  await step("the charts get points and show the messages sent", async () => {
    const pts0 = Number(await admin.evaluate(() => document.querySelector("#c-in").dataset.points || 0));
    // traffic: 60 messages from the clients, and a few every 200 ms from now on (for the screenshots)
    await clients.evaluate(async () => {
      for (let i = 0; i < 60; i++) await window.call(window.socks[i % 3], "echo", { i });
      window.traffic = setInterval(() => {
        const n = 1 + Math.floor(Math.random() * 6);
        for (let k = 0; k < n; k++) window.socks[k % 3].send(JSON.stringify({ type: "echo", data: k, id: "t" + k }));
      }, 200);
    });
    await waitFor(admin, (p) => Number(document.querySelector("#c-in").dataset.points) > p + 1, pts0, "new points in the msgs-in chart");
    await waitFor(admin, () => Number(document.querySelector("#c-in").dataset.sum) >= 60 && Number(document.querySelector("#c-out").dataset.sum) >= 60,
      null, "the charts' sums to reach the 60 messages");
    const lbl = await text(admin, "#l-in");
    if (!/max [1-9]/.test(lbl)) throw new Error(`chart label "${lbl}"`);
    const drawn = await admin.evaluate(() => {
      const c = document.querySelector("#c-in");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let ink = 0;
      for (let i = 3; i < d.length; i += 4) ink += d[i] > 0;
      return ink;
    });
    if (drawn < 50) throw new Error(`the chart canvas is nearly empty (${drawn} pixels drawn)`);
  });

  await step("push to a room from the rooms table: confirmation, result, exactly the members receive it", async () => {
    await admin.click('#rooms button[data-a="pr"][data-i="lobby"]');
    if ((await admin.inputValue("#p-id")) !== "lobby" || (await admin.inputValue("#p-to")) !== "room") throw new Error("the form is not filled in");
    await admin.fill("#p-data", '{"hello":"from e2e"}');
    await admin.click("#pf button.p");
    await waitFor(admin, () => !document.querySelector("#conf").hidden, null, "the confirmation");
    const q = await text(admin, "#ctext");
    if (!/lobby/.test(q) || !/chat/.test(q)) throw new Error(`confirmation text "${q}"`);
    await admin.click("#cyes");
    await waitFor(admin, () => /delivered to 3 connections/.test(document.querySelector("#res").textContent), null, "the result 'delivered to 3'");
    await clients.waitForFunction(() => window.socks.slice(0, 3).every((w) => w.got.some((m) => m.type === "admin.test")), null, { timeout: STEP_MS })
      .catch(() => {});
    const got = await clients.evaluate(async () => {
      await new Promise((r) => setTimeout(r, 300));   // time for a duplicate, or a push to the fourth client, to show
      return window.socks.map((w) => w.got.filter((m) => m.type === "admin.test"));
    });
    const want = JSON.stringify([{ type: "admin.test", data: { hello: "from e2e" } }]);
    const seen = got.map((g) => JSON.stringify(g));
    if (seen[0] !== want || seen[1] !== want || seen[2] !== want || seen[3] !== "[]") throw new Error(`received: ${seen.join(" | ")}`);
  });

  await step("screenshots at 1280 px", async () => {
    fs.mkdirSync(outDir, { recursive: true });
    await admin.waitForTimeout(1500);   // a few more chart points from the traffic
    await admin.evaluate(() => window.scrollTo(0, 0));
    await admin.screenshot({ path: path.join(outDir, "admin-1280.png"), fullPage: true, timeout: STEP_MS });
  }, { gate: false });

  await step("a cancelled disconnect does nothing", async () => {
    await admin.click(`#conns button[data-a="dc"][data-i="${ids[1]}"]`);
    await admin.click("#df button.p");
    await waitFor(admin, () => !document.querySelector("#conf").hidden, null, "the confirmation");
    await admin.click("#cno");
    await waitFor(admin, () => /cancelled/.test(document.querySelector("#res").textContent), null, "'cancelled'");
    const closed = await clients.evaluate(() => window.socks[1].closed);
    if (closed) throw new Error(`closed anyway: ${JSON.stringify(closed)}`);
  });

  await step("disconnect from the connections table: the client is closed with the code and reason given", async () => {
    await admin.click(`#conns button[data-a="dc"][data-i="${ids[1]}"]`);
    if ((await admin.inputValue("#d-id")) !== ids[1]) throw new Error("the form is not filled in");
    await admin.fill("#d-code", "4321");
    await admin.fill("#d-why", "e2e says bye");
    await admin.click("#df button.p");
    await waitFor(admin, () => /4321/.test(document.querySelector("#ctext").textContent), null, "the confirmation");
    await admin.click("#cyes");
    await waitFor(admin, () => /closed with 4321/.test(document.querySelector("#res").textContent), null, "the result");
    await clients.waitForFunction(() => window.socks[1].closed, null, { timeout: STEP_MS });
    const closed = await clients.evaluate(() => window.socks[1].closed);
    if (closed.code !== 4321 || closed.reason !== "e2e says bye") throw new Error(`closed with ${JSON.stringify(closed)}`);
    await waitTile(admin, "ws", "3");
  });

  await step("an action refused by linkd shows its error (unknown connection: 404)", async () => {
    await admin.fill("#d-id", "99999.1");
    await admin.click("#df button.p");
    await admin.click("#cyes");
    await waitFor(admin, () => /404/.test(document.querySelector("#res").textContent), null, "the 404 result");
    // the browser logs the 404 answer as a console error: expected here, not counted
    const i = errors.findIndex((e) => /404/.test(e));
    if (i >= 0) errors.splice(i, 1);
  });

  await step("names are shown as text: a room named with markup injects nothing", async () => {
    const evil = '<img src=x onerror="window.__pwned=1">';
    await join(clients, 0, evil);
    await waitFor(admin, (e) => [...document.querySelectorAll("#rooms td")].some((td) => td.textContent === e), evil, "the room's name as text");
    const injected = await admin.evaluate(() => window.__pwned === 1 || !!document.querySelector("#rooms img"));
    if (injected) throw new Error("markup from a room name was rendered");
  });

  await step("400 px wide: no horizontal scroll, the tiles and actions readable; screenshot", async () => {
    await admin.setViewportSize({ width: 400, height: 860 });
    await admin.evaluate(() => window.scrollTo(0, 0));
    await admin.waitForTimeout(300);
    const over = await admin.evaluate(() => {
      const d = document.documentElement;
      const out = [];
      if (d.scrollWidth > d.clientWidth) out.push(`page ${d.scrollWidth} > ${d.clientWidth}`);
      for (const el of document.querySelectorAll(".card, .tile, header")) {
        const r = el.getBoundingClientRect();
        if (r.right > d.clientWidth + 1) out.push(`${el.id || el.className} ends at ${Math.round(r.right)}`);
      }
      return out.join("; ");
    });
    if (over) throw new Error(over);
    await admin.screenshot({ path: path.join(outDir, "admin-400.png"), fullPage: true, timeout: STEP_MS });
  }, { gate: false });

  await step("no console errors or page errors once the token was in (before it: only the 401/403 answers)", async () => {
    const unexpected = before.filter((e) => !/status of 40[13]/.test(e));
    if (errors.length || unexpected.length) throw new Error([...errors, ...unexpected].join("; "));
  }, { gate: false });
} finally {
  await clients?.evaluate(() => clearInterval(window.traffic)).catch(() => {});
  await browser?.close().catch(() => {});
}
