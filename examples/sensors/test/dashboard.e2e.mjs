// The sensors dashboard in Debian's chromium (headless, playwright-core),
// through linkd: history and live samples drawn, an admin changes the rate
// from the page, a viewer without the role is told FORBIDDEN. A screenshot
// goes to OUT_DIR/sensors-dashboard.png. One PASS:/FAIL: line per check.
//   node dashboard.e2e.mjs PLAYWRIGHT_CORE_DIR BASE_URL OUT_DIR ADMIN_TOKEN
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pwDir, url, outDir, adminToken] = process.argv.slice(2);
const { chromium } = await import(pathToFileURL(path.join(pwDir, "index.mjs")).href);
const T = "t_sensors: browser";
const STEP_MS = 15000;
let stopped = null;

async function step(name, fn) {
  if (stopped) { console.log(`FAIL: ${T}: ${name} — not run: "${stopped}" failed`); return; }
  try { await fn(); console.log(`PASS: ${T}: ${name}`); }
  catch (err) { stopped = name; console.log(`FAIL: ${T}: ${name} — ${String(err?.message ?? err).split("\n")[0].slice(0, 300)}`); }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const admin = await browser.newPage({ viewport: { width: 1200, height: 820 } });
  const problems = [];
  admin.on("pageerror", (e) => problems.push("page error: " + e.message));
  admin.on("console", (m) => { if (m.type() === "error") problems.push("console: " + m.text()); });
  admin.on("requestfailed", (r) => problems.push(`${r.url()} failed`));
  admin.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.url()} -> ${r.status()}`); });

  await step("the dashboard loads through linkd and goes live over WebSocket", async () => {
    await admin.goto(`${url}/sensors/?token=${adminToken}`, { timeout: STEP_MS });
    await admin.waitForFunction(() => window.sensorsState?.connected && document.getElementById("status").textContent === "live", null, { timeout: STEP_MS });
  });
  await step("history and live samples arrive (at least 2 pushes)", async () => {
    await admin.waitForFunction(() => window.sensorsState.pushes >= 2 && window.sensorsState.samples.length >= 3, null, { timeout: STEP_MS });
  });
  await step("the readings are shown: memory %, load, network, temperature (or 'no sensor')", async () => {
    const v = await admin.evaluate(() => ({
      mem: document.getElementById("v-mem").textContent, cpu: document.getElementById("v-cpu").textContent,
      net: document.getElementById("v-net").textContent, temp: document.getElementById("v-temp").textContent,
      last: window.sensorsState.samples.at(-1),
    }));
    if (!/\d+\.\d % of [\d.]+ GiB/.test(v.mem)) throw new Error(`memory shows "${v.mem}"`);
    if (!/load/.test(v.cpu) || !/in/.test(v.net)) throw new Error(`cpu "${v.cpu}" net "${v.net}"`);
    const want = v.last.temp_c == null ? /no sensor/ : /°C/;
    if (!want.test(v.temp)) throw new Error(`temperature shows "${v.temp}" for ${v.last.temp_c}`);
  });
  await step("the charts are drawn (pixels of each series' colour on the canvases)", async () => {
    await admin.waitForFunction(() => window.sensorsState.samples.length >= 4, null, { timeout: STEP_MS });
    await admin.waitForTimeout(100);
    const counts = await admin.evaluate(() => {
      const hex = (n) => getComputedStyle(document.documentElement).getPropertyValue(n).trim();
      const rgb = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
      const count = (id, v) => {
        const c = document.getElementById(id), d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const [r, g, b] = rgb(hex(v));
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40 && d[i + 3] > 128) n++;
        return n;
      };
      // network: in and out may both be flat at 0, out drawn over in
      return { mem: count("c-mem", "--mem"), cpu: count("c-cpu", "--load"), net: count("c-net", "--rx") + count("c-net", "--tx") };
    });
    for (const [k, n] of Object.entries(counts)) if (n < 20) throw new Error(`chart ${k}: ${n} pixels of its colour (${JSON.stringify(counts)})`);
  });
  await step("an admin changes the sampling rate from the page (500 ms), samples follow it", async () => {
    await admin.selectOption("#rate", "500");
    await admin.click("#apply");
    await admin.waitForFunction(() => /every 500 ms/.test(document.getElementById("rate-msg").textContent), null, { timeout: STEP_MS });
    const n0 = await admin.evaluate(() => window.sensorsState.samples.length);
    await admin.waitForFunction((n) => window.sensorsState.samples.length >= n + 4, n0, { timeout: STEP_MS });
    const gaps = await admin.evaluate(() => { const s = window.sensorsState.samples.slice(-4); return s.slice(1).map((x, i) => x.t - s[i].t); });
    if (!gaps.every((g) => g >= 250 && g <= 1200)) throw new Error(`gaps ${gaps}`);
  });
  await step("a viewer without the admin role is told FORBIDDEN; it sees the admin's rate", async () => {
    const viewer = await browser.newPage({ viewport: { width: 800, height: 600 } });
    await viewer.goto(`${url}/sensors/`, { timeout: STEP_MS });
    await viewer.waitForFunction(() => window.sensorsState?.connected && window.sensorsState.config?.interval_ms === 500, null, { timeout: STEP_MS });
    await viewer.selectOption("#rate", "250");
    await viewer.click("#apply");
    await viewer.waitForFunction(() => /FORBIDDEN/.test(document.getElementById("rate-msg").textContent), null, { timeout: STEP_MS });
    await viewer.close();
  });
  await step("screenshot saved", async () => {
    await admin.selectOption("#window", "300");
    await admin.waitForTimeout(1200);
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, "sensors-dashboard.png");
    await admin.screenshot({ path: file, fullPage: true });
    if (fs.statSync(file).size < 10000) throw new Error(`${file} is only ${fs.statSync(file).size} bytes`);
  });
  await step("rate set back to 1 s", async () => {
    await admin.selectOption("#rate", "1000");
    await admin.click("#apply");
    await admin.waitForFunction(() => /every 1000 ms/.test(document.getElementById("rate-msg").textContent), null, { timeout: STEP_MS });
  });
  await step("no failed request, error response or script error on the page", async () => {
    if (problems.length) throw new Error(problems.slice(0, 3).join("; "));
  });
} finally {
  await browser.close();
}
