// The sensors dashboard: history over HTTP, live samples over linkd's
// WebSocket, four canvas charts (no library). A JWT in ?token= is passed to
// linkd; with the role "admin" it may change the sampling rate.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get("token") || "";
  const MAX = 4000;                          // samples kept in the page
  const state = { samples: [], config: null, connected: false, lastError: null, pushes: 0 };
  window.sensorsState = state;               // for tests and the curious

  // ---- who am I (the claims, as linkd will read them; not verified here)
  if (token) {
    try {
      const c = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      const roles = Array.isArray(c.roles) ? c.roles : [];
      $("who").textContent = `${c.preferred_username || c.username || c.sub} (${roles.join(", ") || "no roles"})`;
    } catch { $("who").textContent = "token given"; }
  }

  // ---- charts
  const css = getComputedStyle(document.documentElement);
  const color = (n) => css.getPropertyValue(n).trim();
  const fmtBytes = (v) => v == null ? "–" : v >= 1e6 ? (v / 1e6).toFixed(2) + " MB/s" : v >= 1e3 ? (v / 1e3).toFixed(1) + " kB/s" : v.toFixed(0) + " B/s";
  const charts = {
    temp: { series: [["--temp", (s) => s.temp_c]], min: null, fmt: (v) => v.toFixed(0) },
    cpu: { series: [["--cpu", (s) => s.cpu_pct], ["--load", (s) => s.load[0] * 100 / Math.max(1, cores())]], min: 0, max: 100, fmt: (v) => v.toFixed(0) },
    mem: { series: [["--mem", (s) => s.mem.used_pct]], min: 0, max: 100, fmt: (v) => v.toFixed(0) },
    net: { series: [["--rx", (s) => s.net.rx_bps], ["--tx", (s) => s.net.tx_bps]], min: 0, fmt: (v) => fmtBytes(v).replace("/s", "") },
  };
  const cores = () => state.config?.cpus || 1;   // the 1-minute load drawn as % of the board's CPUs
  function niceStep(range) {
    const raw = range / 4, p = Math.pow(10, Math.floor(Math.log10(raw || 1))), n = raw / p;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * p;
  }
  function draw(name) {
    const ch = charts[name], cv = $("c-" + name), ctx = cv.getContext("2d");
    const dpr = window.devicePixelRatio || 1, w = cv.clientWidth, h = cv.clientHeight;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) { cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr); }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // the window chosen, or less while there is less history (at least 10 intervals)
    const now = state.samples.length ? state.samples[state.samples.length - 1].t : Date.now();
    const first = state.samples.length ? state.samples[0].t : now;
    const win = Math.min(Number($("window").value) * 1000, Math.max(now - first, 10 * (state.config?.interval_ms || 1000), 5000));
    const pts = state.samples.filter((s) => s.t >= now - win);
    let lo = Infinity, hi = -Infinity;
    for (const [, f] of ch.series) for (const s of pts) { const v = f(s); if (v != null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }
    if (ch.min != null) lo = Math.min(ch.min, lo === Infinity ? ch.min : lo);
    if (ch.max != null) hi = Math.max(ch.max, hi === -Infinity ? ch.max : hi);
    if (lo === Infinity) { ctx.fillStyle = color("--dim"); ctx.font = "13px system-ui"; ctx.fillText(name === "temp" ? "no temperature sensor on this machine" : "waiting for samples…", 8, h / 2); return; }
    if (hi - lo < 1e-9) { hi += 1; lo -= ch.min != null && lo - 1 < ch.min ? 0 : 1; }
    const step = niceStep(hi - lo); lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
    const L = 44, R = 6, T = 6, B = 18, pw = w - L - R, ph = h - T - B;
    const x = (t) => L + (t - (now - win)) / win * pw, y = (v) => T + ph - (v - lo) / (hi - lo) * ph;
    ctx.font = "11px system-ui"; ctx.lineWidth = 1;
    for (let v = lo; v <= hi + step / 2; v += step) {
      ctx.strokeStyle = color("--line"); ctx.beginPath(); ctx.moveTo(L, Math.round(y(v)) + 0.5); ctx.lineTo(w - R, Math.round(y(v)) + 0.5); ctx.stroke();
      ctx.fillStyle = color("--dim"); ctx.textAlign = "right"; ctx.fillText(ch.fmt(v), L - 4, y(v) + 4);
    }
    const ticks = pw > 420 ? 4 : 2;
    for (let k = 0; k <= ticks; k++) {
      const t = now - win + win * k / ticks;
      ctx.textAlign = k === 0 ? "left" : k === ticks ? "right" : "center";
      ctx.fillText(new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }), x(t), h - 4);
    }
    ctx.lineWidth = 1.6; ctx.lineJoin = "round";
    for (const [c, f] of ch.series) {
      ctx.strokeStyle = color(c); ctx.beginPath();
      let pen = false, prev = null;
      for (const s of pts) {
        const v = f(s);
        // a gap longer than 3 intervals (the service was away) breaks the line
        if (v == null || !isFinite(v) || (prev && s.t - prev > 3 * Math.max(1000, state.config?.interval_ms || 1000))) { pen = false; }
        if (v != null && isFinite(v)) { const px = x(s.t), py = y(v); pen ? ctx.lineTo(px, py) : ctx.moveTo(px, py); pen = true; }
        prev = s.t;
      }
      ctx.stroke();
    }
  }
  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; for (const n of Object.keys(charts)) draw(n); showLatest(); });
  }
  function showLatest() {
    const s = state.samples[state.samples.length - 1];
    if (!s) return;
    $("v-temp").innerHTML = s.temp_c == null ? '<span class="none">no sensor</span>' : `${s.temp_c.toFixed(1)} <small>°C</small>`;
    $("v-cpu").innerHTML = `${s.cpu_pct == null ? "–" : s.cpu_pct.toFixed(0)}<small> %</small> · ${s.load.map((v) => v.toFixed(2)).join(" ")} <small>load</small>`;
    $("v-mem").innerHTML = `${s.mem.used_pct.toFixed(1)} <small>% of ${(s.mem.total_kb / 1048576).toFixed(2)} GiB</small>`;
    $("v-net").innerHTML = `${fmtBytes(s.net.rx_bps)} <small>in</small> · ${fmtBytes(s.net.tx_bps)} <small>out</small>`;
  }
  function add(s) {
    const last = state.samples[state.samples.length - 1];
    if (last && s.t <= last.t) return;
    state.samples.push(s);
    if (state.samples.length > MAX) state.samples.splice(0, state.samples.length - MAX);
    redraw();
  }
  function showConfig(c) {
    state.config = c;
    $("host").textContent = c.host;
    $("interval").textContent = `every ${c.interval_ms} ms`;
    $("load-legend").textContent = `load 1 min (% of ${c.cpus} CPU${c.cpus > 1 ? "s" : ""})`;
    const opt = [...$("rate").options].find((o) => Number(o.value) === c.interval_ms);
    if (opt) $("rate").value = opt.value;
  }
  window.addEventListener("resize", redraw);
  $("window").addEventListener("change", redraw);

  // ---- history, then live
  async function history() {
    try {
      const r = await fetch("/api/sensors/history");
      const j = await r.json();
      for (const s of j.samples) add(s);
    } catch (e) { state.lastError = "history: " + e.message; }
  }

  let ws = null, seq = 0, backoff = 500;
  const waiting = new Map();
  function call(type, data) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== 1) return reject(new Error("not connected"));
      const id = "r" + ++seq;
      waiting.set(id, { resolve, reject });
      ws.send(JSON.stringify({ type, data, id }));
      setTimeout(() => { if (waiting.delete(id)) reject(new Error("no answer")); }, 10000);
    });
  }
  function connect() {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/sensors${token ? "?token=" + encodeURIComponent(token) : ""}`;
    ws = new WebSocket(url);
    ws.onopen = () => {
      state.connected = true; backoff = 500;
      $("status").textContent = "live"; $("status").className = "pill ok";
      call("sensors.get").then((r) => { showConfig(r.config); if (r.latest) add(r.latest); }).catch(() => {});
    };
    ws.onmessage = (ev) => {
      let m; try { m = JSON.parse(ev.data); } catch { return; }
      if (m.id && waiting.has(m.id)) {
        const w = waiting.get(m.id); waiting.delete(m.id);
        m.error ? w.reject(Object.assign(new Error(m.error.message), { type: m.error.type })) : w.resolve(m.data);
        return;
      }
      if (m.type === "sensors.sample") { state.pushes++; add(m.data); }
      else if (m.type === "sensors.config") showConfig(m.data);
    };
    ws.onclose = () => {
      state.connected = false;
      $("status").textContent = "reconnecting"; $("status").className = "pill";
      for (const [, w] of waiting) w.reject(new Error("disconnected"));
      waiting.clear();
      setTimeout(connect, backoff); backoff = Math.min(backoff * 2, 8000);
    };
  }
  $("apply").addEventListener("click", async () => {
    const msg = $("rate-msg");
    try {
      const c = await call("sensors.set_rate", { interval_ms: Number($("rate").value) });
      showConfig(c);
      msg.textContent = `sampling every ${c.interval_ms} ms`; msg.className = "ok";
    } catch (e) {
      state.lastError = e.type || e.message;
      msg.textContent = e.type === "FORBIDDEN" ? "FORBIDDEN: the admin role is needed to change the rate" : `${e.type || "error"}: ${e.message}`;
      msg.className = "err";
    }
  });
  history().then(connect);
})();
