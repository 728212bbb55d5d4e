// DocChat client: one WebSocket, answers streamed as text, rendered as sanitised HTML on finish.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const messagesEl = $("messages"), form = $("ask-form"), input = $("question");
  const stopBtn = $("stop"), badge = $("connection"), titleEl = $("chat-title");
  const choice = $("provider-choice");  // the answer mode; only there when there is a choice
  const state = {
    ws: null, backoff: 500, conversationId: null,
    pending: new Map(),   // client_id -> ask frame not yet acknowledged (resent after reconnect)
    answers: new Map(),   // answer_id -> {el, text}
    active: new Set(),    // answer ids still streaming
    loading: null,        // the conversation load in flight (a newer one, or "New chat", makes it stale)
  };
  // The hooks other scripts of the page use (static/chat/documents.js): frames of other types,
  // the socket (re)opening, the conversation changing, and fields added to an ask that starts one.
  const hooks = { frames: {}, open: [], conversation: [] };
  window.docchat = {
    onFrame(type, fn) { hooks.frames[type] = fn; },
    onOpen(fn) { hooks.open.push(fn); },
    onConversation(fn) { hooks.conversation.push(fn); },
    conversationId() { return state.conversationId; },
    csrfToken() { return csrfToken(); },
    newConversationFields() { return {}; },
  };

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (c) =>
      (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16));
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function nearBottom() { return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 80; }
  function scrollIfFollowing(wasNear) { if (wasNear) messagesEl.scrollTop = messagesEl.scrollHeight; }

  // --- rendering -------------------------------------------------------------------------------
  function addQuestion(text) {
    const q = el("div", "msg user"); q.appendChild(el("div", "body", text));
    messagesEl.appendChild(q); scrollIfFollowing(true);  // your own question always scrolls into view
    return q;
  }
  function answerView(id, question) {
    let a = state.answers.get(id);
    if (!a) {
      const box = el("div", "msg assistant"); box.dataset.id = id;
      const status = el("div", "status", "thinking…");
      const body = el("div", "body streaming");
      box.append(status, body);
      messagesEl.appendChild(box);
      a = { el: box, status, body, text: "", question: question || "" };
      state.answers.set(id, a);
    }
    if (question) a.question = question;
    return a;
  }
  function showFinished(a, m) {
    a.body.classList.remove("streaming");
    a.body.innerHTML = m.html || "";   // sanitised by the server (markdown-it + nh3)
    a.el.classList.toggle("stopped", m.status === "stopped");
    a.el.classList.toggle("failed", m.status === "failed");
    a.el.classList.toggle("degraded", m.status === "degraded");
    a.el.classList.toggle("interrupted", m.status === "interrupted");
    const t = m.timings || {};
    const parts = [];
    if (m.status === "stopped") parts.push("stopped" + (m.error_code === "detached_limit" ? " (too many answers running with no tab open)" : ""));
    if (m.status === "interrupted") parts.push("interrupted: the server restarted while writing this answer");
    if (m.status === "failed") parts.push("failed" + (m.error_code ? " (" + m.error_code + ")" : ""));
    if (m.status === "degraded") parts.push("degraded: passages only, the model was unavailable (" + m.error_code + ")");
    const mode = answerMode(m);
    if (mode) parts.push(mode);
    if (t.first_token !== undefined) parts.push("first token " + t.first_token.toFixed(2) + " s");
    if (t.total !== undefined) parts.push("total " + t.total.toFixed(2) + " s");
    a.status.textContent = parts.join(" · ");
    renderSources(a, m.sources || [], m.text || "");
    offerRetry(a, m.status === "interrupted" || m.status === "failed");
  }
  // What kind of answer this is, from the provider and the grounding check (chat/grounding.py).
  function answerMode(m) {
    const support = m.support || {};
    const notes = [];
    if (support.fallback) notes.push("the model's answer stated things its sources do not say: quotes shown instead");
    else if (m.provider === "extractive") notes.push("quoted from your documents");
    else if (m.provider === "local") notes.push("written by a small local model: check it against the sources");
    if (support.unsupported && !support.fallback) notes.push(support.unsupported + (support.unsupported === 1 ? " sentence" : " sentences") + " not found in the sources");
    return notes.join(" · ");
  }
  function offerRetry(a, wanted) {
    a.el.querySelectorAll(".retry").forEach((b) => b.remove());
    if (!wanted || !a.question) return;
    const button = el("button", "retry", "Retry");
    button.type = "button";
    button.title = "Ask this question again in this conversation";
    button.addEventListener("click", () => { button.disabled = true; ask(a.question); });
    a.el.appendChild(button);
  }
  function renderSources(a, sources, text) {
    a.el.querySelectorAll(".sources").forEach((s) => s.remove());
    if (!sources.length) return;
    const cited = new Set((text.match(/\[(\d{1,2})\]/g) || []).map((s) => Number(s.slice(1, -1))));
    const box = el("div", "sources");
    const list = el("ol");
    for (const s of sources) {
      const li = el("li", cited.has(s.n) ? "cited" : "also");
      li.id = "source-" + a.el.dataset.id + "-" + s.n;
      const section = s.section && s.section !== s.title ? s.section : "";
      const where = [s.title, s.page ? "page " + s.page : "", section].filter(Boolean).join(" · ");
      const head = el("button", "source-head", "[" + s.n + "] " + where);
      head.type = "button";
      const snip = el("blockquote", "snippet", s.snippet); snip.hidden = true;
      head.addEventListener("click", () => { snip.hidden = !snip.hidden; });
      li.append(head, snip);
      if (!cited.has(s.n)) li.appendChild(el("span", "small muted", " also retrieved"));
      list.appendChild(li);
    }
    box.append(el("div", "small muted", "Sources"), list);
    a.el.appendChild(box);
    a.el.querySelectorAll("a.cite").forEach((link) => {
      link.addEventListener("click", (ev) => {
        ev.preventDefault();
        const li = a.el.querySelector("#source-" + a.el.dataset.id + "-" + link.dataset.n);
        if (li) { li.querySelector(".snippet").hidden = false; li.classList.add("flash"); li.scrollIntoView({ block: "nearest" }); }
      });
    });
  }
  function updateStop() { stopBtn.hidden = state.active.size === 0; }

  // --- protocol --------------------------------------------------------------------------------
  const handlers = {
    ack(m) {
      const asked = state.pending.get(m.client_id);
      state.pending.delete(m.client_id);
      if (state.conversationId !== m.conversation_id) setConversation(m.conversation_id, null, true);
      const a = answerView(m.answer_id, asked && asked.text);
      if (!m.duplicate) { state.active.add(m.answer_id); updateStop(); }
      else a.status.textContent = "already asked; loading the answer…";
    },
    queued(m) { answerView(m.answer_id).status.textContent = "waiting for a free slot (position " + m.position + ")…"; },
    start(m) { answerView(m.answer_id).status.textContent = "searching your documents…"; },
    resume(m) {
      // What follows is this answer from its beginning (we reconnected, or another tab asked it).
      const a = answerView(m.answer_id);
      a.text = ""; a.body.textContent = ""; a.body.classList.add("streaming");
      a.status.textContent = "still being answered…";
      state.active.add(m.answer_id); updateStop();
    },
    status(m) {
      const labels = { generating: "writing…", degraded: "the model is unavailable: showing the best passages instead" };
      answerView(m.answer_id).status.textContent = labels[m.stage] || m.stage;
    },
    delta(m) {
      const wasNear = nearBottom();
      const a = answerView(m.answer_id);
      a.text += m.text; a.body.textContent = a.text;   // plain text while streaming
      a.status.textContent = "writing…";
      scrollIfFollowing(wasNear);
    },
    finish(m) {
      const wasNear = nearBottom();
      state.active.delete(m.answer_id); updateStop();
      showFinished(answerView(m.answer_id), m);
      scrollIfFollowing(wasNear);
      refreshSidebar();
    },
    error(m) {
      if (m.client_id) state.pending.delete(m.client_id);
      const target = m.answer_id ? answerView(m.answer_id) : null;
      if (target) { target.status.textContent = "error: " + m.message; target.el.classList.add("failed"); }
      else { const e = el("div", "msg error", m.message + (m.retry_after ? " (retry in " + m.retry_after + " s)" : "")); messagesEl.appendChild(e); }
    },
    pong() {},
  };

  function connect() {
    if (state.ws && state.ws.readyState <= WebSocket.OPEN) return;  // connecting or connected
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/chat/");
    state.ws = ws;
    badge.textContent = "connecting…"; badge.className = "badge";
    ws.onopen = () => {
      badge.textContent = "connected"; badge.className = "badge ok";
      state.backoff = 500;
      if (state.conversationId) loadConversation(state.conversationId);
      for (const frame of state.pending.values()) ws.send(JSON.stringify(frame));
      hooks.open.forEach((fn) => fn());
    };
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;  // an older socket still closing
      let m; try { m = JSON.parse(ev.data); } catch (e) { return; }
      const h = handlers[m.type] || hooks.frames[m.type]; if (h) h(m);
    };
    let opened = false;
    ws.addEventListener("open", () => { opened = true; });
    ws.onclose = async (ev) => {
      if (state.ws !== ws) return;  // an older socket that closed after its replacement opened
      // 4401: this session signed out (here or in another tab) or its password changed.
      if (ev.code === 4401 || (!opened && await loggedOut())) { location.href = "/login/?next=/"; return; }
      // 1008: too many frames, or too many open tabs; the error frame said which. Retry slowly.
      if (ev.code === 1008) state.backoff = Math.max(state.backoff, 10000);
      for (const id of state.active) answerView(id).status.textContent = "connection lost: the answer is still being written and will show when you are back…";
      state.active.clear(); updateStop();
      if (!navigator.onLine) { badge.textContent = "offline"; badge.className = "badge warn"; return; }  // "online" reconnects
      badge.textContent = "reconnecting…"; badge.className = "badge warn";
      setTimeout(connect, state.backoff);
      state.backoff = Math.min(state.backoff * 2, 10000);
    };
  }
  async function loggedOut() {
    // A rejected handshake looks the same for every cause; the session tells if we were logged out.
    try {
      const r = await fetch("/api/conversations/", { credentials: "same-origin", redirect: "manual" });
      return r.type === "opaqueredirect" || r.status === 401 || r.status === 403;
    } catch (e) { return false; }
  }
  // The network went away (a laptop changing networks, a phone in a tunnel): close now rather than
  // wait minutes for TCP to notice. Answers keep being written on the server; back online, the
  // page reloads the conversation and follows the answers still being written.
  window.addEventListener("offline", () => { if (state.ws) state.ws.close(4000, "offline"); });
  window.addEventListener("online", () => { state.backoff = 500; connect(); });
  function send(frame) { if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame)); }

  // --- conversations ---------------------------------------------------------------------------
  // collectionIds: what the conversation searches (null: all readable; undefined: not known here).
  // provider: its answer mode ("": the default; undefined: not known here).
  function setConversation(id, title, keepMessages, collectionIds, provider) {
    state.conversationId = id;
    if (!id) showProvider("");
    else if (provider !== undefined) showProvider(provider);
    if (id) history.replaceState(null, "", "#c" + id); else history.replaceState(null, "", location.pathname);
    if (title !== null) titleEl.textContent = title || "New chat";
    $("rename").hidden = $("delete").hidden = !id;
    document.querySelectorAll(".conversation").forEach((c) => c.classList.toggle("current", Number(c.dataset.id) === id));
    if (!keepMessages) { messagesEl.innerHTML = ""; state.answers.clear(); }
    hooks.conversation.forEach((fn) => fn(id, collectionIds));
  }
  async function loadConversation(id) {
    const token = state.loading = {};
    const r = await fetch("/api/conversations/" + id + "/", { credentials: "same-origin" });
    // The person moved on meanwhile ("New chat", another conversation): this answer is stale.
    if (state.loading !== token) return;
    if (!r.ok) { setConversation(null, "New chat", false); return; }
    const data = await r.json();
    if (state.loading !== token) return;
    setConversation(data.id, data.title, false, data.collection_ids, data.provider);
    let question = "";
    for (const m of data.messages) {
      if (m.role === "user") { addQuestion(m.text); question = m.text; continue; }
      const a = answerView(m.answer_id, question);
      if (m.status === "pending") {
        // Still being written (by this server or another, for this tab or another): follow it.
        a.status.textContent = "still being answered…";
        send({ type: "follow", answer_id: m.answer_id });
        continue;
      }
      showFinished(a, m);
    }
    messagesEl.scrollTop = messagesEl.scrollHeight;
  }
  async function refreshSidebar() {
    const q = $("conversation-search").value.trim();
    const r = await fetch("/api/conversations/" + (q ? "?q=" + encodeURIComponent(q) : ""), { credentials: "same-origin" });
    if (!r.ok) return;
    const nav = $("conversations"); nav.innerHTML = "";
    const items = (await r.json()).conversations;
    if (!items.length) nav.appendChild(el("p", "muted small", q ? "No conversation matches." : "No conversations yet."));
    for (const c of items) {
      const row = el("div", "conversation-row");
      const a = el("a", "conversation", c.title || "Untitled"); a.href = "#c" + c.id; a.dataset.id = c.id;
      if (c.id === state.conversationId) { a.classList.add("current"); titleEl.textContent = c.title; }
      row.appendChild(a); nav.appendChild(row);
    }
  }
  function csrfToken() {
    const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  async function api(method, id, body) {
    return fetch("/api/conversations/" + id + "/", {
      method: method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: body ? JSON.stringify(body) : undefined,
    });
  }
  $("rename").addEventListener("click", async () => {
    const title = prompt("New name for this conversation:", titleEl.textContent);
    if (!title || !title.trim() || !state.conversationId) return;
    const r = await api("PATCH", state.conversationId, { title: title });
    if (r.ok) { titleEl.textContent = (await r.json()).title; refreshSidebar(); }
  });
  $("delete").addEventListener("click", async () => {
    if (!state.conversationId || !confirm("Delete this conversation and its messages?")) return;
    const r = await api("DELETE", state.conversationId);
    if (r.ok) { setConversation(null, "New chat", false); refreshSidebar(); }
  });
  let searchTimer = null;
  $("conversation-search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(refreshSidebar, 200); });
  $("conversations").addEventListener("click", (ev) => {
    const link = ev.target.closest(".conversation"); if (!link) return;
    ev.preventDefault(); loadConversation(Number(link.dataset.id));
  });
  $("new-chat").addEventListener("click", () => { state.loading = null; setConversation(null, "New chat", false); input.focus(); });

  // The answer mode shown is the conversation's; one no longer offered shows as the default.
  function showProvider(name) {
    if (!choice) return;
    const offered = Array.from(choice.options).some((o) => o.value === name);
    choice.value = offered ? name : choice.dataset.default;
    choice.dataset.current = choice.value;
  }
  if (choice) choice.addEventListener("change", async () => {
    if (!state.conversationId) return;  // a new conversation: sent with its first question
    const r = await api("PATCH", state.conversationId, { provider: choice.value });
    if (r.ok) choice.dataset.current = choice.value; else choice.value = choice.dataset.current;
  });

  function ask(text) {
    const frame = { type: "ask", conversation_id: state.conversationId, text: text, client_id: uuid() };
    if (!state.conversationId) Object.assign(frame, window.docchat.newConversationFields());
    if (!state.conversationId && choice) frame.provider = choice.value;
    state.pending.set(frame.client_id, frame);
    addQuestion(text);
    send(frame);
  }
  // The question's length: shown from 80 % of the limit; over it, Send says why instead of sending
  // (the server refuses it too, with question_too_long; nothing is ever cut).
  const maxChars = Number(input.dataset.maxChars) || Infinity;
  const counter = $("question-count"), sendBtn = $("send");
  function showCount() {
    const n = input.value.length, over = n > maxChars;
    counter.hidden = n < 0.8 * maxChars;
    counter.textContent = over ? n + " / " + maxChars + " characters: too long by " + (n - maxChars) : n + " / " + maxChars;
    counter.classList.toggle("over", over);
    sendBtn.disabled = over;
    return !over;
  }
  input.addEventListener("input", showCount);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value.trim(); if (!text || !showCount()) return;
    input.value = ""; showCount();
    ask(text);
  });
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); } });
  stopBtn.addEventListener("click", () => { for (const id of state.active) send({ type: "stop", answer_id: id }); });

  const match = location.hash.match(/^#c(\d+)$/);
  if (match) state.conversationId = Number(match[1]);
  connect();
  if (state.conversationId) loadConversation(state.conversationId);
})();
