// End-to-end: the chat example in Debian's chromium (headless), through
// linkd. Two pages (separate browser contexts) join one room; a message
// typed in one appears in the other; the typing indicator shows; history
// is there after a reload. Prints one PASS:/FAIL: line per check.
//   node chat.e2e.mjs http://127.0.0.1:PORT OUT_DIR
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, outDir = path.resolve("tests/out")] = process.argv.slice(2);
const T = "t_browser";
const STEP_MS = 10000;
let failedEarlier = null;

async function step(name, fn) {
  if (failedEarlier) {
    console.log(`FAIL: ${T}: ${name} — not run: "${failedEarlier}" failed`);
    return;
  }
  try {
    await fn();
    console.log(`PASS: ${T}: ${name}`);
  } catch (err) {
    failedEarlier = name;
    const msg = String(err?.message ?? err).split("\n")[0].slice(0, 300);
    console.log(`FAIL: ${T}: ${name} — ${msg}`);
  }
}

const room = `e2e-${Date.now().toString(36)}`;

async function waitText(page, sel, needle) {
  await page.waitForFunction(
    ([s, n]) => (document.querySelector(s)?.textContent ?? "").includes(n),
    [sel, needle],
    { timeout: STEP_MS },
  );
}

async function enter(page, name) {
  await page.goto(url + "/", { timeout: STEP_MS });
  await waitText(page, "#status", "connected");
  await page.fill("#name", name);
  await page.fill("#room", room);
  await page.click("#join");
  await waitText(page, "#room-title", "#" + room);
  await page.waitForSelector("#text:not([disabled])", { timeout: STEP_MS });
}

let browser;
const pages = {};
const consoleErrors = [];
try {
  await step("chromium starts headless (Debian's /usr/bin/chromium)", async () => {
    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      headless: true,
      timeout: 30000,
      // playwright-core gives chromium a fresh temporary --user-data-dir of its own
      // (it refuses one in args), removed at close
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });

  await step("page served through linkd (GET / and /chat.js) and WebSocket connected", async () => {
    for (const who of ["alice", "bob"]) {
      const ctx = await browser.newContext({ viewport: { width: 1000, height: 640 } });
      const page = await ctx.newPage();
      page.on("pageerror", (e) => consoleErrors.push(`${who}: ${e.message}`));
      pages[who] = page;
      const resp = await page.goto(url + "/", { timeout: STEP_MS });
      if (!resp || resp.status() !== 200) throw new Error(`GET / -> ${resp?.status()}`);
      await waitText(page, "#status", "connected");
    }
  });

  await step("two pages join one room", async () => {
    await enter(pages.alice, "alice");
    await enter(pages.bob, "bob");
    await waitText(pages.alice, "#members", "bob");
    await waitText(pages.bob, "#members", "alice");
  });

  await step("typing in one page shows the typing indicator in the other", async () => {
    await pages.alice.click("#text");
    await pages.alice.keyboard.type("hello from alice", { delay: 15 });
    await waitText(pages.bob, "#typing", "alice is typing");
  });

  await step("a message sent in one page appears in the other", async () => {
    await pages.alice.keyboard.press("Enter");
    await waitText(pages.bob, "#messages", "hello from alice");
    await waitText(pages.alice, "#messages", "hello from alice");
    const user = await pages.bob.locator("#messages li:last-child .user").textContent({ timeout: STEP_MS });
    if (user !== "alice") throw new Error(`author shown as ${user}`);
  });

  await step("the typing indicator clears once the message arrives", async () => {
    await pages.bob.waitForFunction(() => document.querySelector("#typing").textContent === "", null, { timeout: STEP_MS });
  });

  await step("a reply goes the other way", async () => {
    await pages.bob.fill("#text", "hi alice, bob here");
    await pages.bob.click("#send");
    await waitText(pages.alice, "#messages", "hi alice, bob here");
  });

  await step("history is shown after a reload", async () => {
    await pages.bob.reload({ timeout: STEP_MS });
    await waitText(pages.bob, "#status", "connected");
    await waitText(pages.bob, "#room-title", "#" + room);
    await waitText(pages.bob, "#messages", "hello from alice");
    await waitText(pages.bob, "#messages", "hi alice, bob here");
    const n = await pages.bob.locator("#messages li[data-id]").count();
    if (n !== 2) throw new Error(`${n} history messages, want 2`);
  });

  await step("after the reload messages still flow both ways", async () => {
    await pages.alice.fill("#text", "still there?");
    await pages.alice.click("#send");
    await waitText(pages.bob, "#messages", "still there?");
  });

  await step("screenshots written under tests/out/", async () => {
    fs.mkdirSync(outDir, { recursive: true });
    for (const who of ["alice", "bob"]) {
      const file = path.join(outDir, `browser-chat-${who}.png`);
      await pages[who].screenshot({ path: file, timeout: STEP_MS });
      if (fs.statSync(file).size < 1000) throw new Error(`${file} is too small`);
    }
  });

  await step("no JavaScript errors in the pages", async () => {
    if (consoleErrors.length) throw new Error(consoleErrors.join("; "));
  });
} finally {
  await browser?.close().catch(() => {});
}
