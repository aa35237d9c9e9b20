// The chat page, on linkd-client (/linkd-client.js, built from sdk/client and
// served through linkd): one connection to ws://HOST/ws/chat, requests with
// replies, pushes by type. The client reconnects by itself; the page shows a
// "reconnecting…" banner meanwhile. After a reconnect, when linkd recovered the
// connection, the rooms are still joined and the missed messages arrive as
// pushes; otherwise ({recovered:false}) the page joins again and reloads the
// room's history. A classic script: it loads the module with import().
(async function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get("token");

  let linkd;
  try {
    linkd = await import("/linkd-client.js");
  } catch (err) {
    setStatus("could not load /linkd-client.js", false);
    throw err;
  }
  const client = linkd.connect("/ws/chat", {
    token: token || undefined,
    reconnect: { initialDelayMs: 500, maxDelayMs: 8000 },
    requestTimeoutMs: 10000,
  });
  window.chatClient = client; // for the console (and the browser test)

  const typers = new Map(); // userId -> {username, timer}
  let me = null; // {userId, username}
  let room = null;
  let typingSent = 0;
  let typingStop = null;

  // --- connection ----------------------------------------------------------------
  client.onStateChange((state) => {
    $("banner").hidden = state !== "reconnecting";
    if (state === "open") setStatus("connected", true);
    else if (state === "reconnecting") setStatus("reconnecting…", false);
    else if (state === "connecting") setStatus("connecting…", false);
    else setStatus("closed", false);
    if (state !== "open") enableComposer(false);
  });

  client.onOpen(({ reconnected }) => {
    if (!reconnected) resumeSaved();
  });

  client.onRecover((r) => {
    if (!room) return resumeSaved(); // not in a room yet
    if (r.recovered) {
      // rooms kept by linkd, missed messages delivered: tell the service who this
      // (new) connection is, and refresh the lists
      request("chat.identify", { name: me ? me.username : $("name").value.trim() })
        .then((id) => { me = id; renderOnline(id.online); refreshMembers(); })
        .catch(showError);
      enableComposer(true);
      addSystem(r.missed ? `reconnected: ${r.missed} missed update${r.missed === 1 ? "" : "s"} caught up` : "reconnected: nothing missed");
    } else {
      // too long away, or linkd restarted: join again, which reloads the history
      enter(me ? me.username : $("name").value.trim(), room)
        .then(() => addSystem("reconnected: history reloaded"))
        .catch(showError);
    }
  });

  client.onError((err) => {
    if (err.type !== "LISTENER_ERROR") addSystem("error: " + err.message);
    else console.error(err.details || err);
  });

  /** Rejoins the saved name and room (a page load, or a first connection that dropped early). */
  function resumeSaved() {
    const name = localStorage.getItem("chat.name");
    const savedRoom = localStorage.getItem("chat.room");
    if (name) $("name").value = name;
    if (savedRoom) $("room").value = savedRoom;
    if (name && savedRoom) enter(name, savedRoom).catch(showError);
  }

  const request = (type, data) => client.request(type, data);

  function notify(type, data) {
    if (client.state === "open") client.send(type, data); // typing news is stale once offline: not queued
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
  client.on("chat.message", (data) => {
    if (data.room !== room) return;
    clearTyper(data.userId);
    addMessage(data);
  });
  client.on("chat.typing", (data) => {
    if (data.room !== room || (me && data.userId === me.userId)) return;
    if (data.typing) setTyper(data.userId, data.username);
    else clearTyper(data.userId);
  });
  client.on("chat.user_joined", (data) => {
    if (data.room === room) { addSystem(data.username + " " + tagOf(data.userId).text + " joined"); refreshMembers(); }
  });
  client.on("chat.user_left", (data) => {
    if (data.room === room) { addSystem(data.username + " " + tagOf(data.userId).text + " left"); clearTyper(data.userId); refreshMembers(); }
  });
  const refreshOnline = () => request("chat.online").then((r) => renderOnline(r.online)).catch(() => {});
  client.on("presence.online", refreshOnline);
  client.on("presence.offline", refreshOnline);
  client.on("server.shutdown", () => setStatus("server shutting down", false));

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
})();
