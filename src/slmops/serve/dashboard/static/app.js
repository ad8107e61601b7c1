// slmops dashboard: polls /dashboard/data and draws inline SVG charts (no libraries, no CDN).
"use strict";
const KEY = new URLSearchParams(location.hash.slice(1)).get("key");
const NS = "http://www.w3.org/2000/svg";
const fmt = (x, d = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));
const bytes = (n) => { if (n == null) return "-"; const u = ["B", "KiB", "MiB", "GiB"]; let i = 0; while (n >= 1024 && i < 3) { n /= 1024; i++; } return n.toFixed(1) + " " + u[i]; };

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function barChart(id, values, cls) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  const W = 600, H = 180, L = 40, B = 20, max = Math.max(1e-9, ...values);
  svg.appendChild(el("svg:line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
  svg.appendChild(el("svg:line", { x1: L, y1: 5, x2: L, y2: H - B, class: "axis" }));
  svg.appendChild(el("svg:text", { x: 2, y: 14 }, fmt(max, max < 10 ? 2 : 0)));
  svg.appendChild(el("svg:text", { x: 2, y: H - B }, "0"));
  const w = (W - L) / values.length;
  values.forEach((v, i) => {
    const h = ((H - B - 8) * v) / max;
    svg.appendChild(el("svg:rect", { x: L + i * w + 1, y: H - B - h, width: Math.max(1, w - 2), height: h, class: "bar " + cls, "data-value": v }));
  });
  svg.setAttribute("data-points", String(values.filter((v) => v > 0).length));
}

function row(tbody, cells) {
  const tr = el("tr");
  for (const c of cells) { const td = el("td", c.cls ? { class: c.cls } : {}, c.t ?? c); tr.appendChild(td); }
  tbody.appendChild(tr);
}

function card(k, v, cls) { const d = el("div", { class: "card " + (cls || "") }); d.appendChild(el("div", { class: "v" }, v)); d.appendChild(el("div", { class: "k" }, k)); return d; }

function render(d) {
  const sum = (f) => d.models.reduce((a, m) => a + (m[f] || 0), 0);
  const cards = document.getElementById("cards");
  const p95 = Math.max(0, ...d.models.map((m) => m.latency_p95 || 0));
  cards.replaceChildren(
    card("requests / s", fmt(sum("requests_per_s"))),
    card("tokens / s", fmt(sum("tokens_per_s"), 1), "ok"),
    card("latency p95 (s)", fmt(p95, 3), "warn"),
    card("errors (total)", String(sum("errors_total")), sum("errors_total") ? "bad" : "ok"),
    card("queue depth", String(sum("queue_depth"))),
    card("loaded models", String(d.loaded.length)),
  );
  barChart("chart-requests", d.timeline.map((b) => b.requests), "req");
  barChart("chart-latency", d.timeline.map((b) => b.latency), "lat");
  barChart("chart-tokens", d.timeline.map((b) => b.tokens), "tok");
  const mt = document.querySelector("#models tbody"); mt.replaceChildren();
  for (const m of d.models) row(mt, [m.model, m.version, fmt(m.requests_per_s), fmt(m.tokens_per_s, 1), fmt(m.latency_p50, 3), fmt(m.latency_p95, 3),
    fmt(m.latency_p99, 3), fmt(m.ttft_p50, 3), fmt(m.ttft_p95, 3), String(m.errors_total), String(m.queue_depth), String(m.running), fmt(m.drift, 3), fmt(m.quality, 2)]);
  const lt = document.querySelector("#loaded tbody"); lt.replaceChildren();
  for (const e of d.loaded) row(lt, [e.label, e.runtime, bytes(e.memory_bytes), e.adapters.join(", ") || "-", String(e.active)]);
  const rt = document.querySelector("#latest tbody"); rt.replaceChildren();
  for (const r of d.latest) row(rt, [r.time, r.model || "-", r.version || "-", r.route || "-", { t: String(r.status), cls: r.status === 200 ? "s200" : "serr" },
    `${r.prompt_tokens || 0}/${r.completion_tokens || 0}`, fmt(r.ttft_s, 3), fmt(r.latency_s, 3),
    { t: r.prompt ? String(r.prompt).slice(0, 160) : (d.content_logged ? "" : "(not logged)"), cls: "content" }, { t: r.completion ? r.completion.slice(0, 160) : "", cls: "content" }]);
  document.getElementById("status").textContent = "updated " + new Date(d.now * 1000).toLocaleTimeString() + " · last " + d.window_s / 60 + " min";
}

async function poll() {
  try {
    const res = await fetch("/dashboard/data", { headers: KEY ? { Authorization: "Bearer " + KEY } : {} });
    if (res.status === 401) { document.getElementById("status").textContent = "401: open /dashboard#key=YOUR_KEY"; return; }
    render(await res.json());
  } catch (e) {
    document.getElementById("status").textContent = "error: " + e;
  }
}
poll();
setInterval(poll, 2000);
