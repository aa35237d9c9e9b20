// The chat page: one WebSocket to Linkd (ws://HOST/ws/chat), the envelope
// {"type","data","id"} with replies matched by id, and pushes by type.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat" +
    (token ? "?token=" + encodeURIComponent(token) : "");

  let ws = null;
  let seq = 0;
  let retry = 500;
  const pending = new Map(); // id -> {resolve, reject}
  const typers = new Map(); // userId -> {username, timer}
  let me = null; // {userId, username}
  let room = null;
  let typingSent = 0;
  let typingStop = null;

  // --- transport ------------------------------------------------------------
  function connect() {
    setStatus("connecting…", false);
    ws = new WebSocket(wsUrl);
    ws.onopen = async () => {
      retry = 500;
      setStatus("connected", true);
      const name = localStorage.getItem("chat.name");
      const savedRoom = localStorage.getItem("chat.room");
      if (name) $("name").value = name;
      if (savedRoom) $("room").value = savedRoom;
      if (name && savedRoom) await enter(name, savedRoom).catch(showError);
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.id && pending.has(msg.id)) {
        const p = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) p.reject(Object.assign(new Error(msg.error.message), msg.error));
        else p.resolve(msg.data);
        return;
      }
      if (msg.error) return showError(msg.error);
      onPush(msg.type, msg.data);
    };
    ws.onclose = () => {
      for (const p of pending.values()) p.reject(new Error("disconnected"));
      pending.clear();
      setStatus("disconnected — reconnecting…", false);
      enableComposer(false);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 8000);
    };
  }

  function request(type, data) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return reject(new Error("not connected"));
      const id = "c" + ++seq;
      pending.set(id, { resolve, reject });
      ws.send(JSON.stringify({ type, data, id }));
      setTimeout(() => {
        if (pending.delete(id)) reject(new Error("no answer to " + type));
      }, 10000);
    });
  }

  function notify(type, data) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type, data }));
  }

  // --- actions ---------------------------------------------------------------
  async function enter(name, newRoom) {
    me = await request("chat.identify", { name });
    renderOnline(me.online);
    if (room && room !== newRoom) await request("chat.leave", { room }).catch(() => {});
    const joined = await request("chat.join", { room: newRoom });
    room = joined.room;
    localStorage.setItem("chat.name", name);
    localStorage.setItem("chat.room", room);
    $("room-title").textContent = "#" + room;
    $("messages").replaceChildren();
    for (const m of joined.history) addMessage(m);
    renderMembers(joined.members);
    typers.clear();
    renderTyping();
    enableComposer(true);
    $("text").focus();
  }

  async function send() {
    const text = $("text").value;
    if (!text.trim() || !room) return;
    $("text").value = "";
    stopTyping();
    await request("chat.send", { room, message: text }).catch(showError);
  }

  function onInput() {
    if (!room) return;
    const now = Date.now();
    if (now - typingSent > 2000) {
      typingSent = now;
      notify("chat.typing", { room, typing: true });
    }
    clearTimeout(typingStop);
    typingStop = setTimeout(stopTyping, 3000);
  }

  function stopTyping() {
    clearTimeout(typingStop);
    if (typingSent && room) notify("chat.typing", { room, typing: false });
    typingSent = 0;
  }

  // --- pushes ----------------------------------------------------------------
  function onPush(type, data) {
    switch (type) {
      case "chat.message":
        if (data.room !== room) return;
        clearTyper(data.userId);
        addMessage(data);
        break;
      case "chat.typing":
        if (data.room !== room || (me && data.userId === me.userId)) return;
        if (data.typing) setTyper(data.userId, data.username);
        else clearTyper(data.userId);
        break;
      case "chat.user_joined":
        if (data.room === room) { addSystem(data.username + " " + tagOf(data.userId).text + " joined"); refreshMembers(); }
        break;
      case "chat.user_left":
        if (data.room === room) { addSystem(data.username + " " + tagOf(data.userId).text + " left"); clearTyper(data.userId); refreshMembers(); }
        break;
      case "presence.online":
      case "presence.offline":
        request("chat.online").then((r) => renderOnline(r.online)).catch(() => {});
        break;
      case "server.shutdown":
        setStatus("server shutting down", false);
        break;
    }
  }

  function refreshMembers() {
    if (!room) return;
    request("chat.members", { room }).then((r) => renderMembers(r.members)).catch(() => {});
  }

  function setTyper(userId, username) {
    const old = typers.get(userId);
    if (old) clearTimeout(old.timer);
    typers.set(userId, { username, timer: setTimeout(() => clearTyper(userId), 5000) });
    renderTyping();
  }

  function clearTyper(userId) {
    const t = typers.get(userId);
    if (!t) return;
    clearTimeout(t.timer);
    typers.delete(userId);
    renderTyping();
  }

  // --- rendering -------------------------------------------------------------
  // Names are chosen freely, so two users may share one: each name is shown
  // with a short tag and a colour derived from the user id (FNV-1a), which
  // linkd's token or the service (one per guest connection) makes unique.
  function tagOf(userId) {
    let h = 0x811c9dc5;
    const s = String(userId || "");
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
    return { text: "#" + (h % 1679616).toString(36).padStart(4, "0"), hue: (h >>> 20) % 360 };
  }

  function userEls(u) {
    const name = document.createElement("span");
    name.className = "user";
    name.textContent = u.username;
    const t = tagOf(u.userId);
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = t.text;
    tag.title = u.userId;
    tag.style.setProperty("--hue", String(t.hue));
    return [name, tag];
  }

  function addMessage(m) {
    const li = document.createElement("li");
    li.dataset.id = m.id;
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = new Date(m.createdAt).toLocaleTimeString();
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.content;
    li.append(time, ...userEls(m), text);
    $("messages").append(li);
    li.scrollIntoView({ block: "end" });
  }

  function addSystem(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    $("messages").append(li);
  }

  function renderTyping() {
    const names = [...typers.values()].map((t) => t.username);
    $("typing").textContent = names.length === 0 ? "" :
      names.join(", ") + (names.length === 1 ? " is typing…" : " are typing…");
  }

  function renderList(el, users) {
    el.replaceChildren(...users.map((u) => {
      const li = document.createElement("li");
      li.append(...userEls(u));
      if (me && u.userId === me.userId) li.className = "me";
      return li;
    }));
  }
  const renderOnline = (users) => renderList($("online"), users || []);
  const renderMembers = (users) => renderList($("members"), users || []);

  function setStatus(text, ok) {
    $("status").textContent = text;
    $("status").classList.toggle("ok", ok);
  }

  function enableComposer(on) {
    $("text").disabled = !on;
    $("send").disabled = !on;
  }

  function showError(err) {
    addSystem("error: " + (err && err.message ? err.message : String(err)));
  }

  // --- wiring ----------------------------------------------------------------
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    enter($("name").value.trim(), $("room").value.trim()).catch(showError);
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("text").addEventListener("input", onInput);
  connect();
})();
