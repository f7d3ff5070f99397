// cnnlab dashboard: helpers shared by every page (DOM building, the JSON API, colour maps, canvases, charts).
"use strict";

const APP = document.getElementById("app");
const DATA = APP ? APP.dataset : {};
const $ = (sel, el = document) => el.querySelector(sel);
const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));

// h("div", {class: "x", onclick: f}, "text", child): strings become text nodes, so nothing is parsed as HTML.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k in el && k !== "list" && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// GET/POST JSON; a 503 ("still computing") is retried after its Retry-After, up to `tries` times.
async function api(url, opts = {}, tries = 60) {
  for (let i = 0; ; i++) {
    const r = await fetch(url, opts);
    if (r.status === 503 && i < tries) {
      await new Promise(res => setTimeout(res, 1000 * (+r.headers.get("Retry-After") || 2)));
      continue;
    }
    const body = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }
}

function fail(el, err) {
  el.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
}

// A panel: title, the equivalent cnnlab command (click copies it), content.
function panel(title, command, ...children) {
  const head = h("div", { class: "head" }, h("h2", {}, title), command ? cmdLine(command) : null);
  return h("section", { class: "panel" }, head, ...children);
}

function cmdLine(text) {
  const el = h("code", { class: "cmd", title: `${text}\n(the same from the command line; click to copy)` }, text);
  el.addEventListener("click", () => {
    navigator.clipboard?.writeText(text).then(() => { el.classList.add("copied"); setTimeout(() => el.classList.remove("copied"), 800); });
  });
  return el;
}

const fmt = {
  pct: v => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + "%"),
  num: (v, d = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(d)),
  int: v => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US")),
  g: v => (v === null || v === undefined ? "–" : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? Number(v).toExponential(3) : Number(v).toPrecision(4)),
  dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  },
  when: t => (t ? t.replace("T", " ").slice(0, 16) : "–"),
};

function statusPill(status) {
  return h("span", { class: `status ${status}` }, status);
}

// base64 little-endian bytes → typed arrays
function b64bytes(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
const f32 = s => new Float32Array(b64bytes(s).buffer);

// colour maps: value in [0, 1] → [r, g, b]
function ramp(stops) {
  return t => {
    t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i, a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map(k => Math.round(a[k] + (b[k] - a[k]) * f));
  };
}
const CMAP = {
  viridis: ramp([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]),
  coolwarm: ramp([[59, 76, 192], [141, 176, 254], [221, 221, 221], [244, 154, 123], [180, 4, 38]]),
  inferno: ramp([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]),
  gray: t => { const v = Math.round(255 * Math.min(1, Math.max(0, t))); return [v, v, v]; },
};

// Draws values[offset .. offset+h*w) as an h×w map on one shared scale lo..hi: "coolwarm" around 0 when the
// values have both signs, else "viridis". The canvas is h×w pixels, enlarged by CSS (pixelated).
function drawMap(canvas, values, offset, hgt, wid, lo, hi, scale = 1) {
  canvas.width = wid; canvas.height = hgt;
  canvas.style.width = wid * scale + "px"; canvas.style.height = hgt * scale + "px";
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(wid, hgt);
  const signed = lo < 0 && hi > 0, m = Math.max(Math.abs(lo), Math.abs(hi)) || 1, span = hi - lo || 1;
  const cmap = signed ? CMAP.coolwarm : CMAP.viridis;
  for (let i = 0; i < hgt * wid; i++) {
    const v = values[offset + i];
    const [r, g, b] = cmap(signed ? 0.5 + v / (2 * m) : (v - lo) / span);
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// A uint8 image (C, H, W), C = 1 or 3, onto a canvas; returns the ImageData (for overlays).
function drawPixels(canvas, bytes, shape, scale = 1) {
  const [c, hgt, wid] = shape;
  canvas.width = wid; canvas.height = hgt;
  canvas.style.width = wid * scale + "px"; canvas.style.height = hgt * scale + "px";
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(wid, hgt), n = hgt * wid;
  for (let i = 0; i < n; i++) {
    const r = bytes[i], g = c === 3 ? bytes[n + i] : r, b = c === 3 ? bytes[2 * n + i] : r;
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return img;
}

// Heat map over an image: the image dimmed to gray, the map (0..max) in "inferno" blended by its strength.
function drawOverlay(canvas, bytes, shape, heat, scale = 1) {
  const base = drawPixels(canvas, bytes, shape, scale), ctx = canvas.getContext("2d");
  const vals = f32(heat.data), hi = Math.max(Math.abs(heat.lo), Math.abs(heat.hi)) || 1;
  const signed = heat.lo < 0;
  for (let i = 0; i < vals.length; i++) {
    const t = signed ? 0.5 + vals[i] / (2 * hi) : vals[i] / hi;
    const [r, g, b] = (signed ? CMAP.coolwarm : CMAP.inferno)(t);
    const a = signed ? Math.min(1, Math.abs(vals[i]) / hi * 1.3) : Math.min(1, 0.25 + 0.75 * t);
    const gray = (base.data[4 * i] + base.data[4 * i + 1] + base.data[4 * i + 2]) / 3 * 0.6;
    base.data.set([gray + (r - gray) * a, gray + (g - gray) * a, gray + (b - gray) * a, 255].map(Math.round), 4 * i);
  }
  ctx.putImageData(base, 0, 0);
  canvas.dataset.state = "drawn";
}

// Line chart (uPlot): x values and named series; returns {plot, push(x, ...ys)} for live points.
const COLORS = ["#1f5fa8", "#c0392b", "#2e7d4f", "#b7791f", "#7b4bb3", "#0e8a8a"];
function lineChart(el, title, x, series, opts = {}) {
  const width = Math.max(300, el.clientWidth || 420);
  const data = [x.slice(), ...series.map(s => s.values.slice())];
  const plot = new uPlot({
    title, width, height: opts.height || 220,
    scales: { x: { time: false } },
    legend: { live: false },
    // whole epochs on the x axis (uPlot's default increments would label 1.05, 1.1, ...)
    axes: [{ label: opts.xlabel || "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (u, v) => v.map(String) },
      { size: 64, values: (u, v) => v.map(x => String(+(+x).toPrecision(3))) }],
    series: [{ label: opts.xlabel || "epoch" }, ...series.map((s, i) => ({
      label: s.label, stroke: s.color || COLORS[i % COLORS.length], width: 2, dash: s.dash,
      points: { show: true, size: 5 }, spanGaps: true,
    }))],
  }, data, el);
  return {
    plot, data,
    push(xv, ...ys) { data[0].push(xv); ys.forEach((v, i) => data[i + 1].push(v)); plot.setData(data); },
    reset(xs, ...cols) { data.length = 0; data.push(xs.slice(), ...cols.map(c => c.slice())); plot.setData(data); },
  };
}

function table(headers, rows, numeric = []) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { class: numeric.includes(i) ? "num" : null }, t)))),
    h("tbody", {}, rows.map(r => h("tr", {}, r.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c))))));
}

function imageUrl(run, key, scale = 1) {
  return `/api/runs/${encodeURIComponent(run)}/images/${encodeURIComponent(key)}?scale=${scale}`;
}
