// "My documents" on the chat page: upload (button or drag and drop), live progress from the chat
// socket's `document` frames, delete, and which collections the conversation searches.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const chat = window.docchat;
  const panel = $("docs-panel"), list = $("docs-list"), notices = $("docs-notices");
  const input = $("docs-input"), scopeList = $("scope-list"), scopeAll = $("scope-all");
  const state = {
    documents: new Map(),   // document_id -> document (as GET /api/documents/ lists it)
    collections: [],        // readable collections: {collection_id, name, personal, public}
    chosen: null,           // collection ids this conversation searches; null: all readable
    quota: null,
  };
  const LABELS = { pending: "queued", extracting: "reading the file…", embedding: "embedding", ready: "ready", failed: "failed" };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function size(n) {
    if (n < 1048576) return Math.max(1, Math.round(n / 1024)) + " KB";
    return (n / 1048576).toFixed(n < 10485760 ? 1 : 0).replace(/\.0$/, "") + " MB";
  }

  // --- the list ----------------------------------------------------------------------------------
  // The list is read whole (at start, when the socket (re)connects, after an upload) and kept up
  // to date by frames. One read at a time; a frame that arrives while one is under way may be
  // older or newer than what it returns, so of the two the step further along wins (a document
  // only goes back to "pending" when it is uploaded again).
  const loading = { running: false, again: false, seen: new Map() };  // seen: frames during a read
  function rank(d) {
    if (d.status === "deleted") return 4;
    if (d.status === "ready" || d.status === "failed") return 3;
    if (d.status === "embedding") return 2 + (d.chunks_total ? d.chunks_done / (d.chunks_total + 1) : 0);
    return d.status === "extracting" ? 1 : 0;
  }
  async function load() {
    if (loading.running) { loading.again = true; return; }
    loading.running = true; loading.seen.clear();
    try {
      const r = await fetch("/api/documents/", { credentials: "same-origin" });
      if (r.ok) {
        const data = await r.json();
        const fresh = new Map(data.documents.map((d) => [d.document_id, d]));
        for (const [id, d] of loading.seen) {
          const read = fresh.get(id);
          if (d.status === "deleted") fresh.delete(id);
          else if (!read || rank(d) >= rank(read)) fresh.set(id, Object.assign({}, read, d));
        }
        state.documents = fresh; state.collections = data.collections; state.quota = data.quota;
        if (state.chosen) {  // a collection no longer readable is no longer chosen (the server would refuse it)
          const readable = new Set(data.collections.map((c) => c.collection_id));
          const kept = state.chosen.filter((id) => readable.has(id));
          state.chosen = kept.length ? kept : null;
        }
        renderList(); renderScope();
      }
    } catch (e) { /* offline: the next (re)connection reads it again */ }
    loading.running = false;
    if (loading.again) { loading.again = false; load(); }
  }
  // One step of a document (a frame, or an upload's reply): kept unless what is shown is further.
  function apply(d, fromFrame) {
    if (loading.running) loading.seen.set(d.document_id, Object.assign({}, loading.seen.get(d.document_id), d));
    const known = state.documents.get(d.document_id);
    if (d.status === "deleted") state.documents.delete(d.document_id);
    else if (!known) state.documents.set(d.document_id, Object.assign({ file_name: d.title, size_bytes: 0 }, d));
    else if (fromFrame || rank(d) >= rank(known)) Object.assign(known, d);
    renderList();
  }
  function renderList() {
    list.querySelectorAll("li.doc:not(.uploading)").forEach((li) => li.remove());
    const docs = [...state.documents.values()].sort((a, b) => b.document_id - a.document_id);
    for (const d of docs) list.appendChild(docRow(d));
    $("docs-empty").hidden = docs.length > 0 || list.querySelector("li.uploading") !== null;
    $("docs-count").textContent = docs.length ? String(docs.length) : "";
    if (state.quota) {
      const q = state.quota, files = docs.length;
      const used = docs.reduce((sum, d) => sum + (d.size_bytes || 0), 0);
      $("docs-quota").textContent = files + " of " + q.max_files + " files · " + (used ? size(used) : "0 MB") + " of " +
        size(q.max_bytes) + " used · up to " + size(q.max_upload_bytes) + " per file";
    }
  }
  function docRow(d) {
    const li = el("li", "doc " + d.status); li.dataset.id = d.document_id; li.dataset.status = d.status;
    const head = el("div", "doc-head");
    const title = el("span", "doc-title", d.title || d.file_name); title.title = d.file_name || d.title;
    const del = el("button", "link danger-link doc-delete", "Delete"); del.type = "button";
    del.setAttribute("aria-label", "Delete " + (d.title || d.file_name));
    del.addEventListener("click", () => remove(d));
    head.append(title, del);
    const status = el("div", "doc-status small");
    if (d.status === "embedding" && d.chunks_total) {
      status.append(el("span", "", "embedding " + d.chunks_done + "/" + d.chunks_total + " "));
      const bar = el("progress"); bar.max = d.chunks_total; bar.value = d.chunks_done; status.append(bar);
    } else if (d.status === "ready") {
      status.textContent = "ready · " + d.chunks_total + (d.chunks_total === 1 ? " passage" : " passages");
    } else if (d.status === "failed") {
      status.textContent = "failed: " + (d.error || "unknown reason");
    } else {
      status.textContent = LABELS[d.status] || d.status;
    }
    li.append(head, status);
    return li;
  }
  chat.onFrame("document", (m) => {
    const added = !state.documents.has(m.document_id) && m.status !== "deleted";
    apply({ document_id: m.document_id, title: m.title, status: m.status, chunks_done: m.chunks_done,
      chunks_total: m.chunks_total, error: m.error }, true);
    if (added) load();  // uploaded in another tab: its size and file name
  });
  chat.onOpen(load);  // notices sent while the socket was down are not replayed: read the list again

  async function remove(d) {
    if (!confirm("Delete “" + (d.title || d.file_name) + "”? Its file and passages are removed.")) return;
    const r = await fetch("/api/documents/" + d.document_id + "/", {
      method: "DELETE", credentials: "same-origin", headers: { "X-CSRFToken": chat.csrfToken() },
    });
    if (r.ok || r.status === 404) { apply({ document_id: d.document_id, status: "deleted" }, true); return; }
    notice(d.title || d.file_name, await errorText(r));
  }

  // --- uploading ---------------------------------------------------------------------------------
  // At most UPLOADS_AT_ONCE requests at a time; the others wait in the list as "waiting to upload".
  const UPLOADS_AT_ONCE = 3, waiting = [];
  let sending = 0;
  function upload(files) {
    openPanel(true);
    for (const file of files) {
      const row = el("li", "doc uploading");
      row.append(el("div", "doc-head"), el("div", "doc-status small", "waiting to upload…"));
      row.firstChild.append(el("span", "doc-title", file.name));
      list.prepend(row); $("docs-empty").hidden = true;
      waiting.push([file, row]);
    }
    next();
  }
  function next() {
    while (sending < UPLOADS_AT_ONCE && waiting.length) {
      const [file, row] = waiting.shift();
      sending++;
      send(file, row, () => { sending--; renderList(); next(); });
    }
  }
  function send(file, row, done) {
    const status = row.querySelector(".doc-status");
    const bar = el("progress"); bar.max = 100; bar.value = 0;
    status.textContent = "uploading… "; status.append(bar);
    const max = state.quota ? state.quota.max_upload_bytes : Infinity;
    if (file.size > max) {
      row.remove(); notice(file.name, "the file is larger than the " + size(max) + " limit."); done(); return;
    }
    const xhr = new XMLHttpRequest();  // fetch() cannot report upload progress
    xhr.open("POST", "/api/documents/");
    xhr.setRequestHeader("X-CSRFToken", chat.csrfToken());
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = Math.round(100 * ev.loaded / ev.total); };
    xhr.onloadend = done;
    xhr.onerror = () => { row.remove(); notice(file.name, "the upload did not reach the server; check the connection and retry."); };
    xhr.onload = () => {
      row.remove();
      let body = null; try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: a proxy's page */ }
      if ((xhr.status === 200 || xhr.status === 201) && body && body.document) {
        const d = body.document;
        apply(d, false);  // its progress frames may have been faster than this reply
        if (body.duplicate) {
          notice(file.name, d.status === "pending" ? "this file was already here; it is being processed again."
            : "this file is already in your documents.", "info");
        }
        load();  // the first upload creates the personal collection: the choice below lists it
        return;
      }
      if (!body && (xhr.responseURL || "").includes("/login/")) { notice(file.name, "you were signed out; reload the page and sign in again."); return; }
      notice(file.name, body && body.error ? body.error : "the upload failed (HTTP " + xhr.status + ").");
    };
    const form = new FormData(); form.append("file", file);
    xhr.send(form);
  }
  function notice(name, message, kind) {
    const n = el("div", "docs-notice " + (kind || "error"));
    n.append(el("span", "", message.startsWith(name) ? message : name + ": " + message));
    const close = el("button", "link", "×"); close.type = "button"; close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => n.remove());
    n.append(close);
    notices.appendChild(n);
  }
  async function errorText(r) {
    try { const body = await r.json(); if (body.error) return body.error; } catch (e) { /* not JSON */ }
    return "the request failed (HTTP " + r.status + ").";
  }

  $("docs-add").addEventListener("click", () => input.click());
  input.addEventListener("change", () => { upload([...input.files]); input.value = ""; });
  // Files dropped anywhere on the page go to My documents.
  let depth = 0;
  const carriesFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (ev) => { if (carriesFiles(ev)) { depth++; document.body.classList.add("dragging"); } });
  document.addEventListener("dragleave", (ev) => { if (carriesFiles(ev) && --depth <= 0) { depth = 0; document.body.classList.remove("dragging"); } });
  document.addEventListener("dragover", (ev) => { if (carriesFiles(ev)) ev.preventDefault(); });
  document.addEventListener("drop", (ev) => {
    if (!carriesFiles(ev)) return;
    ev.preventDefault(); depth = 0; document.body.classList.remove("dragging");
    upload([...ev.dataTransfer.files]);
  });

  // --- what the conversation searches ------------------------------------------------------------
  function renderScope() {
    scopeList.innerHTML = "";
    scopeAll.checked = state.chosen === null;
    for (const c of state.collections) {
      const label = el("label", "scope-item");
      const box = el("input"); box.type = "checkbox"; box.value = c.collection_id;
      box.checked = state.chosen === null || state.chosen.includes(c.collection_id);
      box.addEventListener("change", onScopeChange);
      const name = c.personal ? "My documents" : c.name;
      label.append(box, " " + name + (c.public ? " (public)" : ""));
      scopeList.appendChild(label);
    }
    $("scope-summary").textContent = state.chosen === null ? "all your collections"
      : state.chosen.length + " of " + state.collections.length + " collections";
  }
  function onScopeChange() {
    const boxes = [...scopeList.querySelectorAll("input")];
    const ticked = boxes.filter((b) => b.checked).map((b) => Number(b.value));
    choose(ticked.length === 0 || ticked.length === boxes.length ? null : ticked);
  }
  scopeAll.addEventListener("change", () => choose(scopeAll.checked ? null : state.chosen));
  async function choose(ids) {
    state.chosen = ids; renderScope();
    const id = chat.conversationId();
    if (!id) return;  // a new conversation: sent with its first question
    const r = await fetch("/api/conversations/" + id + "/", {
      method: "PATCH", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": chat.csrfToken() },
      body: JSON.stringify({ collection_ids: ids }),
    });
    if (!r.ok) notice("Search choice", await errorText(r));
  }
  chat.newConversationFields = () => ({ collection_ids: state.chosen });
  chat.onConversation((id, collectionIds) => {
    if (collectionIds !== undefined) { state.chosen = collectionIds; renderScope(); }
  });

  // --- the panel ---------------------------------------------------------------------------------
  function openPanel(open) {
    document.body.classList.toggle("docs-open", open);
    $("docs-toggle").setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
    try { localStorage.setItem("docchat.docsOpen", open ? "1" : ""); } catch (e) { /* storage off */ }
  }
  $("docs-toggle").addEventListener("click", () => openPanel(panel.hidden));
  $("docs-close").addEventListener("click", () => openPanel(false));
  try { if (localStorage.getItem("docchat.docsOpen")) openPanel(true); } catch (e) { /* storage off */ }
  load();
})();
