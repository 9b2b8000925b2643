"""The dashboard's one page: HTML, CSS and a small script, all inline.

The script opens ``/events`` (server-sent events: the whole board as JSON) and redraws
from each snapshot; plots are SVG it draws itself, so the page needs nothing from the
internet and no build step. The deadline countdown ticks in the browser between snapshots.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fedq dashboard</title>
<style>
  :root {
    --bg: #f4f6f9; --card: #fff; --ink: #1d2530; --muted: #6b7785; --line: #e3e8ee;
    --ok: #1f9d55; --bad: #d64545; --warn: #d98a00; --blue: #2f6fde; --violet: #8250df;
    --loss: #d9480f; --acc: #2f6fde;
  }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--ink);
    font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
  header { background: #17202b; color: #e8edf3; padding: 14px 28px 12px; }
  header h1 { margin: 0; font-size: 20px; font-weight: 650; display: inline-block; }
  header .where { color: #9fb0c3; margin-left: 12px; font-size: 13px; }
  header .pick { color: #9fb0c3; margin-left: 18px; font-size: 13px; }
  header .pick select { margin-left: 4px; }
  header .clock { float: right; color: #9fb0c3; font-variant-numeric: tabular-nums; }
  #status { margin-top: 10px; display: grid; gap: 4px; }
  .status { display: flex; gap: 10px; align-items: baseline; font-size: 13px; }
  .status .name { width: 128px; flex: none; color: #c9d4df; }
  .status .dot { width: 9px; height: 9px; border-radius: 50%; flex: none; background: #8895a3;
    position: relative; top: 1px; }
  .status.ok .dot { background: #3ddc84; }
  .status.down .dot { background: #ff6b6b; }
  .status.down .msg { color: #ffb3b3; font-weight: 600; }
  .status .msg { color: #9fb0c3; }
  .status code, .banner code { background: rgba(255,255,255,.12); padding: 0 4px;
    border-radius: 3px; }
  .banner { margin: 14px 28px 0; padding: 10px 14px; border-radius: 8px; background: #fdecec;
    color: #8a1f1f; border: 1px solid #f3b7b7; font-weight: 600; }
  .banner code { background: rgba(0,0,0,.06); }
  main, #federations { display: grid; gap: 18px; }
  main { padding: 18px 28px 40px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
    padding: 16px 18px; box-shadow: 0 1px 2px rgba(20,30,40,.04); }
  h2 { margin: 0 0 10px; font-size: 16px; }
  h3 { margin: 16px 0 6px; font-size: 13px; text-transform: uppercase; letter-spacing: .04em;
    color: var(--muted); }
  .fed-head { display: flex; align-items: center; gap: 10px; margin-bottom: 12px; }
  .fed-head h2 { margin: 0; }
  .fed-head .dir { color: var(--muted); font-size: 12px; margin-left: auto; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
    font-weight: 600; background: #eef2f7; color: #3b4856; }
  .badge.running { background: #e3f4ea; color: var(--ok); }
  .badge.done { background: #e8eefc; color: var(--blue); }
  .badge.reason { background: #fdecec; color: #a42b2b; font-family: ui-monospace, monospace; }
  .kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; }
  .kpi { background: #f8fafc; border: 1px solid var(--line); border-radius: 8px;
    padding: 8px 12px; }
  .kpi label { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .05em;
    color: var(--muted); }
  .kpi b { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
  .kpi .of { color: var(--muted); font-size: 14px; }
  .bar { height: 8px; background: #e6ebf1; border-radius: 4px; overflow: hidden; margin-top: 6px; }
  .bar > div { height: 100%; background: var(--ok); transition: width .4s; }
  .plots { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; margin-top: 14px; }
  figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px 10px 4px; }
  figcaption { font-size: 12px; font-weight: 600; color: #3b4856; }
  svg text { font: 11px system-ui, sans-serif; fill: #6b7785; }
  svg .grid { stroke: #edf0f4; }
  svg .axis { stroke: #c5cdd6; }
  .empty { color: var(--muted); font-style: italic; padding: 8px 0; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th { text-align: left; font-size: 11px; text-transform: uppercase; letter-spacing: .04em;
    color: var(--muted); font-weight: 600; border-bottom: 1px solid var(--line); padding: 6px 8px; }
  td { border-bottom: 1px solid #f0f3f6; padding: 6px 8px; vertical-align: top; }
  td.num, th.num { text-align: right; }
  tr.hot td { background: #fff7f7; }
  .state { font-weight: 600; }
  .state.training { color: var(--blue); } .state.sending { color: var(--violet); }
  .state.idle { color: var(--muted); } .state.gone { color: var(--bad); }
  .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
  .detail { color: #3b4856; max-width: 520px; }
  .tools { display: flex; gap: 10px; align-items: center; margin-bottom: 8px; flex-wrap: wrap; }
  .tools .grow { flex: 1; }
  select, button { font: inherit; font-size: 13px; padding: 3px 8px; border: 1px solid #cfd7e0;
    border-radius: 6px; background: #fff; }
  button:disabled { opacity: .45; }
  .muted { color: var(--muted); }
  .nowrap, code { white-space: nowrap; }
  .card.empty { padding: 16px 18px; }
  .note { color: var(--warn); font-size: 12px; font-weight: 600; margin: 0 0 6px; }
  details.fed > summary { cursor: pointer; }
  .legend { font-size: 11px; color: var(--muted); }
  .legend i { display: inline-block; width: 14px; height: 3px; margin: 0 4px 3px 10px;
    vertical-align: middle; }
</style>
</head>
<body>
<header>
  <h1>fedq dashboard</h1><span class="where" id="where"></span>
  <label class="pick">federation <select id="fed-pick"></select></label>
  <span class="clock" id="clock"></span>
  <div id="status"></div>
</header>
<div id="banner"></div>
<main>
  <section id="federations"></section>
  <section class="card" id="queues-panel">
    <div class="tools"><h2 class="grow" style="margin:0">Queues</h2>
      <label><input type="checkbox" id="only-ours" checked> only the federation shown above</label>
    </div>
    <div id="queues"></div>
  </section>
  <section class="card" id="dlq-panel">
    <div class="tools"><h2 class="grow" style="margin:0">Dead-letter queue
      <span class="muted" style="font-weight:400;font-size:13px">
        rejected updates with their reasons, from the ledger (nothing is consumed)</span></h2>
      <select id="dlq-reason"></select>
      <button id="dlq-newer" disabled>&larr; newer</button>
      <button id="dlq-older" disabled>older &rarr;</button>
    </div>
    <div id="dlq"></div>
  </section>
</main>
<script>
"use strict";
let snap = null, offset = 0, es = null, streamUp = false;
const dlq = { fed: "", reason: "", pages: [], rows: [], key: "" };
/* The federation shown: from the address (#fed=NAME), else the first of the picker. */
let picked = decodeURIComponent((location.hash.match(/fed=([^&]*)/) || [])[1] || "");
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
/* A status line: `commands` as code, and no line break inside a --flag. */
const code = (s) => esc(s).replace(/`([^`]+)`/g, "<code>$1</code>")
  .replace(/(^|\s)(--[a-z][a-z-]*)/g, '$1<span class="nowrap">$2</span>');
const now = () => Date.now() / 1000 + offset;
/* Replace an element's content only when it changed: no flicker, an open <select> stays open. */
const shown = new Map();
function show(id, html) {
  if (shown.get(id) !== html) { shown.set(id, html); $(id).innerHTML = html; }
}
const dash = "\u2014";
function num(v, digits) {
  if (v === null || v === undefined) return dash;
  return digits === undefined ? String(v) : Number(v).toFixed(digits);
}
function bytes(n) {
  if (n === null || n === undefined) return dash;
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : 1) : n) + " " + units[i];
}
function rate(r) { return r >= 10 ? r.toFixed(0) : r >= 0.01 ? r.toFixed(2) : "0"; }
function ago(t) {
  if (!t) return dash;
  const s = Math.max(0, now() - t);
  if (s < 60) return s.toFixed(0) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
function countdown(deadline) {
  const s = Math.max(0, deadline - now());
  return Math.floor(s / 60) + ":" + String(Math.floor(s % 60)).padStart(2, "0");
}

/* ---------------------------------------------------------------- status */
function renderStatus() {
  const st = snap.status;
  const rows = [["Broker", st.broker], ["Management API", st.management], ["Ledgers", st.ledgers]];
  show("status", rows.map(([name, s]) => {
    const cls = s.ok === true ? "ok" : s.ok === false ? "down" : "";
    const since = s.ok === false ? " (since " + clock(s.since) + ")" : "";
    return `<div class="status ${cls}" data-source="${esc(name)}"><span class="dot"></span>` +
      `<span class="name">${esc(name)}</span>` +
      `<span class="msg">${code(s.message)}${since}</span></div>`;
  }).join(""));
  $("where").textContent = "state dir " + snap.state_dir;
}
function renderBanner() {
  show("banner", streamUp ? "" :
    `<div class="banner">Lost the dashboard at ${esc(location.host)}: is ` +
    "<code>fedq dashboard</code> still running? Reconnecting\u2026</div>");
}

/* ----------------------------------------------------------------- plots */
function niceTicks(lo, hi, n, steps) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = steps ? steps.find((s) => s >= raw) || steps[steps.length - 1] :
    [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];  /* from the step at or below lo to the one at or above hi */
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  for (let i = first; i <= last; i++) ticks.push(i * step);
  let digits = 0;
  while (digits < 6 && Math.abs(step * 10 ** digits - Math.round(step * 10 ** digits)) > 1e-6) {
    digits++;
  }
  const label = (t) => t.toFixed(digits);
  return { ticks, label, lo: ticks[0], hi: ticks[ticks.length - 1] };
}
/* Clock-friendly steps for a wall-time axis: seconds up to a day. */
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
  21600, 43200, 86400];
function fmt(v) {
  const a = Math.abs(v);
  return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) :
    v.toFixed(3);
}
/* series: [{name, color, points: [[x, y]], right}] */
function chart(series, opts) {
  const W = 520, H = 210, L = 48, R = opts.right ? 48 : 14, T = 12, B = 30;
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return `<div class="empty">${esc(opts.empty)}</div>`;
  let xs = pts.map((p) => p[0]), x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const axis = (side) => {
    const ys = series.filter((s) => !!s.right === side).flatMap((s) => s.points.map((p) => p[1]));
    if (!ys.length) return null;
    let lo = Math.min(...ys), hi = Math.max(...ys);
    const fixed = side ? opts.right : opts.left;
    if (fixed && fixed.min !== undefined) { lo = Math.min(lo, fixed.min); }
    if (fixed && fixed.max !== undefined) { hi = Math.max(hi, fixed.max); }
    if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= Math.abs(lo) * 0.1; }
    const t = niceTicks(lo, hi, 4);
    return { ...t, Y: (y) => T + (1 - (y - t.lo) / (t.hi - t.lo)) * (H - T - B) };
  };
  const left = axis(false), right = axis(true);
  let svg = `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img">`;
  const main = left || right;
  for (const t of main.ticks) {
    const y = main.Y(t);
    svg += `<line class="grid" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/>`;
  }
  if (left) for (const t of left.ticks) {
    svg += `<text x="${L - 6}" y="${left.Y(t) + 4}" text-anchor="end">${left.label(t)}</text>`;
  }
  if (right) for (const t of right.ticks) {
    svg += `<text x="${W - R + 6}" y="${right.Y(t) + 4}">${right.label(t)}</text>`;
  }
  const xt = niceTicks(x0, x1, 6, opts.xSteps).ticks;
  for (const t of xt) {
    if (t < x0 || t > x1) continue;
    svg += `<line class="axis" x1="${X(t)}" x2="${X(t)}" y1="${H - B}" y2="${H - B + 4}"/>` +
      `<text x="${X(t)}" y="${H - B + 16}" text-anchor="middle">${esc(opts.xFormat(t))}</text>`;
  }
  svg += `<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`;
  svg += `<text x="${(L + W - R) / 2}" y="${H - 2}" text-anchor="middle">` +
    `${esc(opts.xLabel)}</text>`;
  for (const s of series) {
    const ax = s.right ? right : left;
    if (!ax || !s.points.length) continue;
    const d = s.points.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " +
      ax.Y(p[1]).toFixed(1)).join(" ");
    svg += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.2"` +
      ` stroke-linejoin="round"/>`;
    for (const p of s.points) {
      svg += `<circle cx="${X(p[0]).toFixed(1)}" cy="${ax.Y(p[1]).toFixed(1)}" r="3"` +
        ` fill="#fff" stroke="${s.color}" stroke-width="2"><title>${esc(s.name)}: ` +
        `${esc(fmt(p[1]))}</title></circle>`;
    }
  }
  svg += "</svg>";
  const legend = series.filter((s) => s.points.length).map((s) =>
    `<i style="background:${s.color}"></i>${esc(s.name)}${s.right ? " (right)" : ""}`).join("");
  return svg + `<div class="legend">${legend}</div>`;
}
function metricSeries(versions, key, x) {
  return versions.filter((v) => typeof v.metrics[key] === "number")
    .map((v) => [x(v), v.metrics[key]]);
}
/* The global model's loss (left axis) and accuracy (right, 0 to 1) against x(version). */
function learning(vs, x, opts) {
  return chart([
    { name: "loss", color: "#d9480f", points: metricSeries(vs, "loss", x) },
    { name: "accuracy", color: "#2f6fde", right: true, points: metricSeries(vs, "accuracy", x) },
  ], { right: { min: 0, max: 1 }, ...opts,
       empty: vs.length ? "no loss or accuracy reported: the app's evaluate returns none"
                        : "no version committed yet" });
}
function plots(f) {
  const byVersion = learning(f.versions, (v) => v.version, {
    xLabel: "model version", xFormat: (t) => "v" + t,
    xSteps: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000] });
  const byTime = learning(f.versions, (v) => v.committed_at, {
    xLabel: "wall time (committed at)", xFormat: clock, xSteps: TIME_STEPS });
  return `<div class="plots">` +
    `<figure class="by-version"><figcaption>Global loss and accuracy per version</figcaption>` +
    `${byVersion}</figure>` +
    `<figure class="by-time"><figcaption>Global loss and accuracy against wall time` +
    `</figcaption>${byTime}</figure></div>`;
}

/* ----------------------------------------------------------- federations */
function kpis(f) {
  const total = f.rounds_total ? `<span class="of"> / ${f.rounds_total}</span>` : "";
  const k = f.accepted ?? 0, K = f.quorum;
  const pct = f.done ? 100 : K ? Math.min(100, 100 * k / K) : 0;
  let deadline = dash;
  if (f.done) deadline = "done";
  else if (f.deadline_at) deadline = `<span class="countdown" data-deadline="${f.deadline_at}">` +
    `${countdown(f.deadline_at)}</span>`;
  const items = [
    ["mode", `<b>${esc(f.mode ?? dash)}</b>`],
    ["model version", `<b class="version">v${f.version}</b>${total}`],
    ["round", `<b>${f.mode === "async" ? "none" : num(f.round)}</b>`],
    [f.mode === "async" ? "buffer" : "quorum",
     K ? `<b class="quorum">${f.done ? K : k} of ${K}</b><span class="of"> updates</span>` +
         `<div class="bar"><div style="width:${pct}%"></div></div>` : `<b>${dash}</b>`],
    ["deadline", `<b>${deadline}</b>`],
  ];
  if (f.epsilon !== null && f.epsilon !== undefined) {
    items.push(["privacy spent", `<b class="epsilon">\u03b5 ${num(f.epsilon, 2)}</b>`]);
  }
  const rejected = Object.values(f.rejected_by_reason).reduce((a, b) => a + b, 0);
  items.push(["refused", `<b>${rejected}</b><span class="of"> in the ledger</span>`]);
  return `<div class="kpis">${items.map(([l, v]) =>
    `<div class="kpi"><label>${esc(l)}</label>${v}</div>`).join("")}</div>`;
}
function participants(f) {
  if (!f.participants.length) return `<div class="empty">no participant seen yet</div>`;
  const rows = f.participants.map((p) => `<tr data-participant="${esc(p.participant)}">` +
    `<td class="mono">${esc(p.participant)}</td>` +
    `<td><span class="state ${esc(p.state)}">${esc(p.state ?? "not seen")}</span></td>` +
    `<td>${ago(p.last_heartbeat)}</td>` +
    `<td class="num">${p.version != null && p.version >= 0 ? "v" + p.version : dash}` +
    `</td><td class="num">${p.accepted}</td>` +
    `<td class="num share">${(100 * (p.share ?? 0)).toFixed(0)}%</td>` +
    `<td class="num">${p.rejected}</td>` +
    `<td class="num">${p.last_staleness} <span class="muted">(max ${p.max_staleness})</span></td>` +
    `<td class="num">${num(p.updates_sent)}</td><td class="num">${bytes(p.bytes_sent)}</td></tr>`);
  return `<table class="participants"><thead><tr><th>participant</th><th>state</th>` +
    `<th>last heartbeat</th><th class="num">trained on</th><th class="num">accepted</th>` +
    `<th class="num">share</th><th class="num">rejected</th><th class="num">staleness</th>` +
    `<th class="num">sent</th>` +
    `<th class="num">bytes sent</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}
/* Participants whose updates keep being refused as stale: the federation is leaving them
   out (the coordinator warns too, and sends each the newest model). */
function leftBehind(f) {
  if (!f.left_behind || !f.left_behind.length) return "";
  const who = f.left_behind.map((p) => `${esc(p.participant)} (${p.refused} updates ` +
    "refused as stale since its last folded one)").join(", ");
  return `<div class="note behind">Left behind: ${who}. ${esc(f.keep_late_updates)}.</div>`;
}
function federation(f) {
  const badge = f.done ? `<span class="badge done">done</span>` :
    f.mode ? `<span class="badge running">running</span>` : "";
  const err = f.ledger_error ? `<div class="muted">ledger: ${esc(f.ledger_error)}</div>` : "";
  const deaf = snap.status.broker.ok === false ? `<div class="note">Not live while the ` +
    "broker is unreachable: as last heard.</div>" : "";
  const stuck = f.cannot_close ? `<div class="note stuck">${esc(f.cannot_close)}</div>` : "";
  const body = `${kpis(f)}${stuck}${err}${plots(f)}<h3>Participants</h3>${deaf}` +
    `${leftBehind(f)}${participants(f)}`;
  const head = `<h2>${esc(f.name)}</h2>${badge}`;
  if (!f.state_dir) {
    return `<details class="card fed" id="fed-${esc(f.name)}"><summary class="fed-head">` +
      `${head}<span class="dir">on the broker, no ledger under this state dir</span></summary>` +
      `${body}</details>`;
  }
  return `<article class="card fed" id="fed-${esc(f.name)}" data-federation="${esc(f.name)}">` +
    `<div class="fed-head">${head}<span class="dir">${esc(f.state_dir)}</span></div>` +
    `${body}</article>`;
}
/* Federations of this state dir before those only seen on the broker; within each,
   running ones first, then the most recently active, then by name. */
function ordered() {
  const rank = (f) => (f.state_dir ? 0 : 2) + (f.mode && !f.done ? 0 : 1);
  return [...snap.federations].sort((a, b) => rank(a) - rank(b) ||
    (b.last_activity || 0) - (a.last_activity || 0) || a.name.localeCompare(b.name));
}
function renderPicker() {
  const feds = ordered();
  if (!feds.some((f) => f.name === picked)) picked = feds.length ? feds[0].name : "";
  show("fed-pick", feds.map((f) => `<option value="${esc(f.name)}"` +
    `${f.name === picked ? " selected" : ""}>${esc(f.name)}${f.mode && !f.done ? " (running)" :
      f.done ? " (done)" : ""}</option>`).join(""));
  $("fed-pick").style.visibility = feds.length > 1 ? "visible" : "hidden";
}
$("fed-pick").onchange = (e) => {
  picked = e.target.value;
  history.replaceState(null, "", "#fed=" + encodeURIComponent(picked));
  dlq.reason = ""; dlq.pages = [];
  render();
};
function renderFederations() {
  const open = new Set([...document.querySelectorAll("details.fed[open]")].map((d) => d.id));
  const feds = snap.federations.filter((f) => f.name === picked);
  show("federations", feds.length ? feds.map(federation).join("") :
    `<div class="card empty">No federation yet under ${esc(snap.state_dir)}: start a ` +
    "coordinator with this <code>--state-dir</code>, or pass the one it uses.</div>");
  for (const id of open) { const d = $(id); if (d) d.open = true; }
}

/* ---------------------------------------------------------------- queues */
function renderQueues() {
  const ours = new Set(picked ? ["fedq." + picked + "."] : []);
  const only = $("only-ours").checked;
  const all = snap.queues;
  const visible = only ? all.filter((q) => [...ours].some((p) => q.name.startsWith(p))) : all;
  const hidden = all.length - visible.length;
  const down = snap.status.management.ok === false;
  const stale = down && snap.queues_at ? `<div class="note">As of ${clock(snap.queues_at)}: ` +
    "the management API is down (see the status above).</div>" : "";
  const more = hidden ? `<div class="muted" style="margin-top:6px">${hidden} other fedq.* ` +
    "queue(s) hidden (untick the box to see them)</div>" : "";
  if (!visible.length) {
    show("queues", stale + `<div class="empty">${down && !snap.queues_at ?
      "queue statistics need the management API (see the status above)" :
      only ? "no queue of these federations on the broker" : "no fedq.* queue on the broker"
    }</div>${more}`);
    return;
  }
  const rows = visible.map((q) => {
    const hot = q.name.endsWith(".rejected") && q.messages > 0 ? " class=\"hot\"" : "";
    return `<tr${hot}><td class="mono">${esc(q.name)}</td><td>${esc(q.type)}</td>` +
      `<td class="num">${q.messages}</td><td class="num">${q.ready}</td>` +
      `<td class="num">${q.unacked}</td><td class="num">${q.consumers}</td>` +
      `<td class="num">${rate(q.publish_rate)}</td><td class="num">${rate(q.deliver_rate)}</td>` +
      `<td class="num">${bytes(q.memory)}</td></tr>`;
  });
  show("queues", stale + `<table id="queues-table"><thead><tr><th>queue</th><th>type</th>` +
    `<th class="num">messages</th><th class="num">ready</th><th class="num">unacked</th>` +
    `<th class="num">consumers</th><th class="num">publish /s</th>` +
    `<th class="num">deliver /s</th><th class="num">memory</th></tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>${more}`);
}

/* ------------------------------------------------------------------- DLQ */
function renderDlqControls() {
  /* The DLQ of the federation picked, read from its ledger (if it has one here). */
  const feds = snap.federations.filter((f) => f.state_dir && f.name === picked);
  if (dlq.fed !== (feds.length ? picked : "")) {
    dlq.fed = feds.length ? picked : "";
    dlq.pages = [];
  }
  for (const id of ["dlq-reason", "dlq-newer", "dlq-older"]) {
    $(id).style.visibility = feds.length ? "visible" : "hidden";
  }
  const fed = feds[0];
  const reasons = fed ? fed.rejected_by_reason : {};
  const total = Object.values(reasons).reduce((a, b) => a + b, 0);
  show("dlq-reason", `<option value="">all reasons (${total})</option>` +
    Object.entries(reasons).sort().map(([r, n]) => `<option value="${esc(r)}"` +
      `${r === dlq.reason ? " selected" : ""}>${esc(r)} (${n})</option>`).join(""));
  return fed ? total + "|" + fed.rejections.map((r) => r.id).join(",") : "";
}
async function loadDlq() {
  if (!dlq.fed) { show("dlq", `<div class="empty">no ledger to read</div>`); return; }
  const before = dlq.pages.length ? dlq.pages[dlq.pages.length - 1] : null;
  const q = new URLSearchParams({ federation: dlq.fed, limit: "25" });
  if (before !== null) q.set("before_id", before);
  if (dlq.reason) q.set("reason", dlq.reason);
  try {
    const r = await fetch("api/rejections?" + q);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    dlq.rows = body.rejections;
    renderDlq();
  } catch (e) {
    show("dlq", `<div class="empty">cannot read the DLQ: ${esc(e.message)}</div>`);
  }
}
function renderDlq() {
  $("dlq-newer").disabled = !dlq.pages.length;
  $("dlq-older").disabled = dlq.rows.length < 25;
  if (!dlq.rows.length) {
    show("dlq", `<div class="empty">no rejected update${dlq.reason ? " of this reason" :
      ""}: nothing in the DLQ of ${esc(dlq.fed)}</div>`);
    return;
  }
  const rows = dlq.rows.map((r) => `<tr><td>${clock(r.at)}</td>` +
    `<td class="mono">${esc(r.participant ?? "unknown")}</td>` +
    `<td><span class="badge reason">${esc(r.reason)}</span></td>` +
    `<td class="detail">${esc(r.detail)}</td>` +
    `<td class="num">${r.base_version === null ? dash : "v" + r.base_version}</td>` +
    `<td class="num">v${num(r.during_version)}</td>` +
    `<td class="mono muted">${esc(r.update_id ?? dash)}</td></tr>`);
  show("dlq", `<table id="dlq-table"><thead><tr><th>time</th><th>participant</th>` +
    `<th>reason</th><th>detail</th><th class="num">trained on</th>` +
    `<th class="num">refused at</th><th>update id</th></tr></thead>` +
    `<tbody>${rows.join("")}</tbody></table>`);
}
$("dlq-reason").onchange = (e) => { dlq.reason = e.target.value; dlq.pages = []; loadDlq(); };
$("dlq-older").onclick = () => {
  if (dlq.rows.length) { dlq.pages.push(dlq.rows[dlq.rows.length - 1].id); loadDlq(); }
};
$("dlq-newer").onclick = () => { dlq.pages.pop(); loadDlq(); };
$("only-ours").onchange = () => snap && renderQueues();

/* ------------------------------------------------------------------ loop */
function render() {
  renderStatus(); renderBanner(); renderPicker(); renderFederations(); renderQueues();
  const key = dlq.fed + "|" + renderDlqControls();
  if (key !== dlq.key && !dlq.pages.length) { dlq.key = key; loadDlq(); }
  document.body.dataset.revision = snap.revision;
}
function tick() {
  if (snap) $("clock").textContent = clock(now());
  for (const el of document.querySelectorAll(".countdown")) {
    el.textContent = countdown(+el.dataset.deadline);
  }
}
function connect() {
  es = new EventSource("events");
  es.onopen = () => { streamUp = true; if (snap) renderBanner(); };
  es.onmessage = (e) => {
    snap = JSON.parse(e.data);
    offset = snap.now - Date.now() / 1000;
    streamUp = true;
    render();
  };
  es.onerror = () => { streamUp = false; renderBanner(); };
}
connect();
setInterval(tick, 250);
</script>
</body>
</html>
"""
