// lmtrain's dashboard: a page per route (#/ runs, #/run/NAME, #/compare/A,B, #/sweep/NAME),
// drawn from /api/ and refreshed every second. Charts are SVG drawn here; nothing is loaded
// from anywhere but this server.
"use strict";

const LN2 = Math.LN2;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const main = document.getElementById("main");
let timer = null;
let state = { sort: "name", desc: false, filter: "", picked: new Set(), axis: "step" };

const api = (path) => fetch("/api/" + path).then((r) => (r.ok ? r.json() : Promise.reject(r.status)));
const runPath = (name) => name.split("/").map(encodeURIComponent).join("/");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (x, d = 3) => (x === null || x === undefined ? "-" : Number(x).toFixed(d));
const human = (x) => (x === null || x === undefined ? "-" : x >= 1e6 ? (x / 1e6).toFixed(2) + "M" : x >= 1e3 ? (x / 1e3).toFixed(1) + "k" : Math.abs(x) < 10 && x !== 0 ? x.toPrecision(2) : String(Math.round(x)));

function route() {
  clearInterval(timer);
  const hash = decodeURIComponent(location.hash.slice(1) || "/");
  const [, page, ...rest] = hash.split("/");
  const arg = rest.join("/");
  document.getElementById("where").textContent = page ? "· " + page + " " + arg : "";
  const show = { run: runPage, compare: comparePage, sweep: sweepPage }[page] || runsPage;
  show(arg);
}
window.addEventListener("hashchange", route);

// ---- charts -------------------------------------------------------------------------------
// series: [{name, points: [[x, y]], color, width, dots}], opts: {title, x, y, hline: {y, label}}
function chart(series, opts) {
  const W = opts.width || 520, H = opts.height || 300, L = 70, R = 12, T = 24, B = 36;
  const pts = series.flatMap((s) => s.points).filter((p) => isFinite(p[0]) && isFinite(p[1]));
  const ys = pts.map((p) => p[1]).concat(opts.hline ? [opts.hline.y] : []);
  let [x0, x1] = [0, Math.max(1, ...pts.map((p) => p[0]))];
  let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let svg = `<svg class="chart" width="${W}" height="${H}" data-title="${esc(opts.title)}">`;
  svg += `<text class="title" x="${L}" y="16">${esc(opts.title)}</text>`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4, x = x0 + ((x1 - x0) * i) / 4;
    svg += `<line x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eee"/><text x="${L - 4}" y="${sy(y) + 4}" text-anchor="end">${y.toPrecision(3)}</text>`;
    svg += `<text x="${sx(x)}" y="${H - B + 14}" text-anchor="middle">${human(x)}</text>`;
  }
  svg += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">${esc(opts.x)}</text>`;
  svg += `<text x="12" y="${(T + H - B) / 2}" transform="rotate(-90 12 ${(T + H - B) / 2})" text-anchor="middle">${esc(opts.y)}</text>`;
  if (opts.hline && isFinite(opts.hline.y)) {
    svg += `<line x1="${L}" x2="${W - R}" y1="${sy(opts.hline.y)}" y2="${sy(opts.hline.y)}" stroke="#555" stroke-dasharray="5 4" data-baseline="${opts.hline.y}"/>`;
    svg += `<text x="${W - R - 4}" y="${sy(opts.hline.y) - 4}" text-anchor="end">${esc(opts.hline.label)}</text>`;
  }
  for (const s of series) {
    const good = s.points.filter((p) => isFinite(p[0]) && isFinite(p[1]));
    const d = good.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join("");
    svg += `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.width || 1.5}" data-series="${esc(s.name)}" data-points="${good.length}"/>`;
    if (s.dots) for (const p of good) svg += `<circle cx="${sx(p[0])}" cy="${sy(p[1])}" r="2.5" fill="${s.color}"/>`;
  }
  const legend = series.map((s) => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("");
  return `<div><div class="legend">${legend}</div>${svg}</svg></div>`;
}

// ---- the runs table -----------------------------------------------------------------------
function runsPage() {
  const draw = async () => {
    const [runs, sweeps] = await Promise.all([api("runs"), api("sweeps")]);
    renderRuns(runs, sweeps.sweeps);
  };
  draw();
  timer = setInterval(draw, 1000);
}

function renderRuns(data, sweeps) {
  const keys = data.differing_keys;
  const cols = [["name", "run"], ["status", "status"], ["step", "step"], ["best_val_bits_per_token", "best val bits/token"], ["baseline_bits_per_token", "KN baseline"], ["tokens_per_s", "tokens/s"], ["started_unix", "started"]];
  const f = state.filter.toLowerCase();
  let rows = data.runs.filter((r) => !f || JSON.stringify(r).toLowerCase().includes(f));
  const val = (r, k) => (k.startsWith("set:") ? r.settings[k.slice(4)] : r[k]);
  rows.sort((a, b) => {
    const [x, y] = [val(a, state.sort), val(b, state.sort)];
    const c = x === y ? 0 : x === null || x === undefined ? 1 : y === null || y === undefined ? -1 : x < y ? -1 : 1;
    return state.desc ? -c : c;
  });
  const head = cols.map(([k, t]) => `<th data-sort="${k}" class="${k === "name" ? "name" : ""}">${t}</th>`).join("") + keys.map((k) => `<th data-sort="set:${esc(k)}">${esc(k)}</th>`).join("");
  const body = rows.map((r) => {
    const step = r.max_steps ? `${r.step} / ${r.max_steps}` : r.step;
    const started = r.started_unix ? new Date(r.started_unix * 1000).toLocaleString() : "-";
    const sets = keys.map((k) => `<td>${esc(r.settings[k] ?? "-")}</td>`).join("");
    const checked = state.picked.has(r.name) ? "checked" : "";
    return `<tr data-run="${esc(r.name)}"><td class="name"><input type="checkbox" data-pick="${esc(r.name)}" ${checked}> <a href="#/run/${runPath(r.name)}">${esc(r.name)}</a></td><td class="text status-${esc(r.status.split(",")[0])}">${esc(r.status)}</td><td>${step}</td><td>${fmt(r.best_val_bits_per_token)}</td><td>${fmt(r.baseline_bits_per_token)}</td><td>${human(r.tokens_per_s)}</td><td>${esc(started)}</td>${sets}</tr>`;
  }).join("");
  const sweepLinks = sweeps.map((s) => `<a href="#/sweep/${runPath(s)}">${esc(s)}</a>`).join(" · ");
  const focused = document.activeElement && document.activeElement.id === "filter";
  main.innerHTML = `<div class="toolbar"><input id="filter" placeholder="filter" value="${esc(state.filter)}"> <button id="compare">compare selected</button> ${sweeps.length ? "sweeps: " + sweepLinks : ""}</div><table id="runs"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table><p>${rows.length} of ${data.runs.length} runs in ${esc(data.dir)}</p>`;
  const filter = document.getElementById("filter");
  filter.oninput = () => { state.filter = filter.value; renderRuns(data, sweeps); };
  if (focused) { filter.focus(); filter.setSelectionRange(filter.value.length, filter.value.length); }
  main.querySelectorAll("th").forEach((th) => (th.onclick = () => { state.desc = state.sort === th.dataset.sort ? !state.desc : false; state.sort = th.dataset.sort; renderRuns(data, sweeps); }));
  main.querySelectorAll("[data-pick]").forEach((c) => (c.onchange = () => { c.checked ? state.picked.add(c.dataset.pick) : state.picked.delete(c.dataset.pick); }));
  document.getElementById("compare").onclick = () => { location.hash = "#/compare/" + [...state.picked].map(encodeURIComponent).join(","); };
}

// ---- one run ------------------------------------------------------------------------------
// Each run's records, fetched once and then only past the last step seen.
const cache = new Map();
async function records(name) {
  const have = cache.get(name) || [];
  const last = have.length ? Math.max(...have.map((r) => r.step)) : null;
  const q = last === null ? "" : "?since=" + last;
  const got = await api(`runs/${runPath(name)}/metrics${q}`);
  // A resume rewrites the file: a step at or below one already seen starts over.
  const all = last !== null && got.records.some((r) => r.step <= last) ? got.records : have.concat(got.records);
  cache.set(name, all);
  return all;
}

function curves(recs, axis) {
  const x = (r) => (axis === "tokens" ? r.tokens_seen : r.step);
  const train = recs.filter((r) => r.kind === "train");
  const evals = recs.filter((r) => r.kind === "eval");
  const pick = (rs, f) => rs.filter((r) => f(r) !== null && f(r) !== undefined).map((r) => [x(r), f(r)]);
  return {
    train: pick(train, (r) => (r.loss === null ? null : r.loss / LN2)),
    val: pick(evals, (r) => r.val_bits_per_token),
    lr: pick(train, (r) => r.lr),
    grad: pick(train, (r) => r.grad_norm),
    speed: pick(train, (r) => r.tokens_per_s),
    baseline: evals.map((r) => r.baseline_bits_per_token).filter((b) => b !== null && b !== undefined).pop(),
  };
}

async function runPage(name) {
  const [config, ckpts, plan] = await Promise.all([api(`runs/${runPath(name)}/config`), api(`runs/${runPath(name)}/checkpoints`), api(`runs/${runPath(name)}/plan`)]).catch(() => [null, null, null]);
  if (!config) { main.innerHTML = `<p>no run ${esc(name)}</p>`; return; }
  main.innerHTML = `<h2>${esc(name)}</h2><div class="toolbar">x axis: <select id="axis"><option value="step">step</option><option value="tokens">tokens seen</option></select></div><div class="charts" id="charts"></div><h3>checkpoints</h3><div id="ckpts"></div><h3>memory plan</h3><pre>${esc(plan.plan || "(not in its train.log)")}</pre><h3>config</h3><pre>${esc(config.toml)}</pre>`;
  const axisSel = document.getElementById("axis");
  axisSel.value = state.axis;
  axisSel.onchange = () => { state.axis = axisSel.value; draw(); };
  const ck = ckpts.checkpoints.map((c) => `<tr><td class="name">${esc(c.folder)}</td><td>${c.step}</td><td>${fmt(c.best_val_loss ? c.best_val_loss / LN2 : null)}</td><td>${fmt(c.last_val_loss ? c.last_val_loss / LN2 : null)}</td><td class="${c.verified ? "ok" : "bad"}">${c.verified ? "verified" : esc(c.problem)}</td></tr>`).join("");
  document.getElementById("ckpts").innerHTML = `<table><tr><th class="name">folder</th><th>step</th><th>best val bits</th><th>last val bits</th><th>manifest</th></tr>${ck}</table>`;
  const draw = async () => {
    const c = curves(await records(name), state.axis);
    const xl = state.axis === "tokens" ? "tokens seen" : "step";
    const hline = c.baseline ? { y: c.baseline, label: `KN baseline ${c.baseline.toFixed(3)}` } : null;
    document.getElementById("charts").innerHTML =
      chart([{ name: "train", points: c.train, color: COLORS[0] }, { name: "val", points: c.val, color: COLORS[1], width: 2.5, dots: true }], { title: "loss (bits/token)", x: xl, y: "bits/token", hline }) +
      chart([{ name: "lr", points: c.lr, color: COLORS[2] }], { title: "learning rate", x: xl, y: "lr" }) +
      chart([{ name: "grad norm", points: c.grad, color: COLORS[3] }], { title: "gradient norm", x: xl, y: "norm" }) +
      chart([{ name: "tokens/s", points: c.speed, color: COLORS[4] }], { title: "throughput", x: xl, y: "tokens/s" });
  };
  await draw();
  timer = setInterval(draw, 1000);
}

// ---- compare ------------------------------------------------------------------------------
async function comparePage(arg) {
  const names = arg.split(",").filter(Boolean).map(decodeURIComponent);
  const draw = async () => {
    const all = await Promise.all(names.map((n) => records(n).catch(() => [])));
    const cs = all.map((r) => curves(r, state.axis));
    const val = cs.map((c, i) => ({ name: names[i] + " val", points: c.val, color: COLORS[i % 10], width: 2.5, dots: true }));
    const train = cs.map((c, i) => ({ name: names[i] + " train", points: c.train, color: COLORS[i % 10], width: 1 }));
    main.innerHTML = `<h2>compare ${names.map(esc).join(" · ")}</h2><div class="charts">${chart(val.concat(train), { title: "loss (bits/token)", x: "step", y: "bits/token", width: 900, height: 420 })}</div>`;
  };
  await draw();
  timer = setInterval(draw, 1000);
}

// ---- a sweep ------------------------------------------------------------------------------
async function sweepPage(name) {
  const draw = async () => {
    const s = await api(`sweeps/${runPath(name)}`);
    const trialName = (t) => name + "/" + t.name;
    const recs = await Promise.all(s.trials.map((t) => records(trialName(t)).catch(() => [])));
    const lines = s.trials.map((t, i) => ({ name: t.name, points: curves(recs[i], "step").val, color: t.name === s.best ? "#d62728" : "#9ca3af", width: t.name === s.best ? 3 : 1 }));
    lines.sort((a) => (a.name === s.best ? 1 : -1));
    const scatter = s.keys.map((k) => {
      const pts = s.trials.filter((t) => t.best_val_bits_per_token !== null);
      const vals = pts.map((t) => t.settings[k]);
      const numeric = vals.every((v) => isFinite(Number(v)));
      const cats = [...new Set(vals)].sort();
      const x = (v) => (numeric ? Number(v) : cats.indexOf(v));
      const best = pts.filter((t) => t.name === s.best).map((t) => [x(t.settings[k]), t.best_val_bits_per_token]);
      const rest = pts.filter((t) => t.name !== s.best).map((t) => [x(t.settings[k]), t.best_val_bits_per_token]);
      return chart([{ name: "trials", points: rest, color: COLORS[0], width: 0, dots: true }, { name: "best", points: best, color: "#d62728", width: 0, dots: true }], { title: `best val bits/token against ${k}` + (numeric ? "" : ` (${cats.join(", ")})`), x: k, y: "bits/token", width: 420, height: 260 });
    }).join("");
    const rows = s.trials.map((t) => `<tr><td>${t.rank}</td><td class="name"><a href="#/run/${runPath(trialName(t))}">${esc(t.name)}</a></td><td class="text">${esc(t.status)}</td><td>${t.steps ?? "-"}</td>${s.keys.map((k) => `<td>${esc(t.settings[k])}</td>`).join("")}<td>${fmt(t.best_val_bits_per_token, 4)}</td></tr>`).join("");
    main.innerHTML = `<h2>sweep ${esc(s.name)}</h2><p>rungs ${s.rungs.join(", ")} · best: <b>${esc(s.best || "-")}</b></p><div class="charts">${chart(lines, { title: "val loss of every trial (red: the best)", x: "step", y: "bits/token", width: 900, height: 380 })}${scatter}</div><table><tr><th>#</th><th class="name">trial</th><th>status</th><th>steps</th>${s.keys.map((k) => `<th>${esc(k)}</th>`).join("")}<th>best val bits/token</th></tr>${rows}</table>`;
  };
  await draw();
  timer = setInterval(draw, 2000);
}

route();
