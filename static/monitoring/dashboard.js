// Monitoring dashboard: polls the JSON API every 2 s and redraws figures and SVG charts.
(function () {
  "use strict";
  const root = document.getElementById("monitoring");
  const api = root.dataset.api;
  const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = v === null || v === undefined ? "–" : v; };
  const csrf = () => document.querySelector("input[name=csrfmiddlewaretoken]").value;

  function chart(id, series, keys) {
    const svg = document.getElementById(id);
    const W = 600, H = 140, pad = 22;
    const values = series.flatMap((p) => keys.map((k) => Number(p[k]) || 0));
    const max = Math.max(1e-9, ...values);
    const x = (i) => pad + (series.length < 2 ? 0 : (i * (W - 2 * pad)) / (series.length - 1));
    const y = (v) => H - pad - ((Number(v) || 0) / max) * (H - 2 * pad);
    let html = `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#ccc"/>`;
    html += `<text x="2" y="${pad}">${max.toFixed(max < 10 ? 2 : 0)}</text><text x="2" y="${H - pad}">0</text>`;
    keys.forEach((k, n) => {
      const pts = series.map((p, i) => `${x(i).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
      html += `<polyline class="line${n + 1}" points="${pts}"/>`;
      html += `<text x="${W - pad - 150}" y="${12 + 12 * n}" fill="${n ? "#dc2626" : "#2563eb"}">${k}</text>`;
    });
    if (!series.length) html += `<text x="${W / 2 - 60}" y="${H / 2}">collecting samples…</text>`;
    svg.innerHTML = html;
  }
  function drawCharts(series) {
    chart("chart-latency", series, ["p95_total", "p95_first_token"]);
    chart("chart-throughput", series, ["answers", "errors"]);
    chart("chart-pool", series, ["pool_in_use", "pool_waiting"]);
    chart("chart-streams", series, ["active_generations", "queued"]);
  }
  function render(s) {
    set("pool-in-use", s.pool.in_use); set("pool-max", s.pool.max); set("pool-idle", s.pool.idle);
    set("pool-waiting", s.pool.waiting); set("pool-timeouts", s.pool.timeouts); set("pg-connections", s.pool.postgres_connections);
    set("active-generations", s.streams.active_generations); set("ws", s.streams.websocket_connections);
    set("queued", s.streams.queued); set("detached", s.streams.detached); set("capacity", s.streams.capacity); set("tps", s.tokens_per_second);
    set("lag", s.loop_lag_ms.last); set("lag-max", s.loop_lag_ms.max);
    set("jobs-running", s.jobs.running); set("jobs-queued", s.jobs.queued); set("jobs-failed", s.jobs.failed_last_hour);
    set("unsupported-sentences", s.grounding.unsupported_sentences); set("grounding-fallbacks", s.grounding.fallbacks);
    set("errors", Object.entries(s.errors_by_code).map(([c, n]) => c + ": " + n).join("  ") || "none");
    const lat = document.getElementById("latency"); lat.innerHTML = "";
    for (const [name, l] of Object.entries(s.latency)) {
      const tr = document.createElement("tr");
      for (const text of [name, "p50 " + (l.p50 ?? "–") + " s", "p95 " + (l.p95 ?? "–") + " s", "n=" + l.count]) {
        const td = document.createElement(tr.children.length ? "td" : "th"); td.textContent = text; tr.appendChild(td);
      }
      lat.appendChild(tr);
    }
    for (const b of s.breakers) {
      const row = document.querySelector(`#breakers tr[data-name="${b.name}"]`); if (!row) continue;
      const cells = row.children;
      cells[1].textContent = b.state; cells[1].className = "state " + b.state;
      cells[2].textContent = b.failures + "/" + b.calls; cells[2].title = b.rule; cells[3].textContent = b.retry_in ?? ""; cells[4].textContent = b.last_error;
    }
    const alerts = document.getElementById("alerts"); alerts.innerHTML = "";
    for (const a of s.alerts) {
      const div = document.createElement("div"); div.className = "alert";
      div.textContent = a.message + " (since " + new Date(a.since * 1000).toLocaleTimeString() + ")"; alerts.appendChild(div);
    }
    drawCharts(s.series);
    set("updated", "updated " + new Date().toLocaleTimeString());
  }
  async function poll() {
    try { const r = await fetch(api, { credentials: "same-origin" }); if (r.ok) render(await r.json()); }
    catch (e) { set("updated", "update failed: " + e); }
  }
  document.getElementById("breakers").addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button.reset"); if (!btn) return;
    if (!confirm("Reset circuit breaker '" + btn.dataset.name + "'? Calls will go to the dependency again.")) return;
    await fetch(root.dataset.reset + btn.dataset.name + "/reset", { method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": csrf() } });
    poll();
  });
  drawCharts(JSON.parse(document.getElementById("initial-series").textContent));
  setInterval(poll, 2000);
  poll();
})();
