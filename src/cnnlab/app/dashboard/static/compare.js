// Compare 2–4 runs: the config keys that differ, overlaid curves, per-class accuracy with deltas, the
// difference of confusion matrices, and one test image's prediction and Grad-CAM under each model.
"use strict";

const IDS = (DATA.runs || "").split(",").filter(Boolean);

function chip(d, i) {
  return h("a", { class: "chip", href: `/runs/${d.runs[i].id}`, style: { background: COLORS[i] } }, d.runs[i].name);
}

function diffPanel(d) {
  if (!d.diff.length) return panel("Config", d.command, h("p", { id: "config-diff" }, "The configs are identical: no key differs."));
  const rows = d.diff.map(x => [h("code", {}, x.key), ...x.values.map(v => (typeof v === "object" ? JSON.stringify(v) : String(v)))]);
  return panel("Config: only the keys that differ", d.command,
    h("p", { class: "hint" }, `${d.diff.length} key${d.diff.length > 1 ? "s" : ""} differ; every other key of config.yaml is the same in all runs.`),
    h("div", { id: "config-diff" }, table(["key", ...d.runs.map((_, i) => chip(d, i))], rows)));
}

function curves(d) {
  const box = h("div", { class: "charts" });
  const epochs = [...new Set(d.histories.flat().map(m => m.epoch))].sort((a, b) => a - b);
  const col = (hist, key) => epochs.map(e => hist.find(m => m.epoch === e)?.[key] ?? null);
  const plots = [["val_acc", "Validation accuracy"], ["val_loss", "Validation loss"], ["train_loss", "Training loss"]];
  const slots = plots.map(() => h("div", { class: "chart" }));
  box.append(...slots);
  requestAnimationFrame(() => plots.forEach(([key, title], k) => {  // once laid out: each takes its cell's width
    lineChart(slots[k], title, epochs, d.histories.map((hist, i) => ({ label: d.runs[i].name, values: col(hist, key), color: COLORS[i] })));
  }));
  return panel("Curves", null, box);
}

function perClass(d) {
  const pc = d.per_class;
  if (!pc.rows.length) return panel("Per-class accuracy", null, h("p", { class: "hint" }, "The first run has no results.json yet."));
  const head = ["class", ...d.runs.map((_, i) => chip(d, i))];
  const rows = pc.rows.map(r => h("tr", {}, h("td", {}, r.class), r.acc.map((a, i) => {
    const delta = r.delta[i];
    const txt = i && delta !== null ? `${fmt.pct(a)} (${delta >= 0 ? "+" : ""}${(100 * delta).toFixed(2)})` : fmt.pct(a);
    return h("td", { class: "num " + (i && delta > 0 ? "up" : i && delta < 0 ? "down" : "") }, txt);
  })));
  return panel("Per-class accuracy", null, h("p", { class: "hint" }, "Deltas in percentage points against the first run."),
    h("table", {}, h("thead", {}, h("tr", {}, head.map(t => h("th", {}, t)))), h("tbody", {}, rows)));
}

function confusionDiffs(d) {
  const parts = d.confusion_diff.map((cd, k) => {
    const title = h("h3", {}, chip(d, k + 1), " minus ", chip(d, 0));
    if (!cd) return h("div", {}, title, h("p", { class: "hint" }, "Not comparable (missing results or other classes)."));
    const short = cd.classes.map(c => (c.length > 8 ? c.slice(0, 7) + "…" : c));
    const m = Math.max(1, ...cd.diff.flat().map(Math.abs));
    const rows = cd.diff.map((row, i) => h("tr", {}, h("th", {}, short[i]), row.map((v, j) => {
      const good = i === j ? v > 0 : v < 0, a = Math.min(1, Math.abs(v) / m);
      return h("td", { style: { background: v ? (good ? `rgba(46,125,79,${a})` : `rgba(192,57,43,${a})`) : "", color: a > 0.55 ? "#fff" : "" },
        title: `${cd.classes[i]} → ${cd.classes[j]}: ${v > 0 ? "+" : ""}${v}` }, v ? (v > 0 ? "+" : "") + v : "·");
    })));
    return h("div", { class: "scroll" }, title, h("table", { class: "diffm" }, h("thead", {}, h("tr", {}, h("th", {}, "true \\ pred"), short.map(s => h("th", {}, s)))), h("tbody", {}, rows)));
  });
  return panel("Confusion matrices: the difference", null,
    h("p", { class: "hint" }, "Green: the later run gets more right (diagonal) or makes fewer of that mistake; red: the opposite."),
    parts);
}

async function pixels(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  const c = h("canvas", { width: img.width, height: img.height }), ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, img.width, img.height).data, n = img.width * img.height, out = new Uint8Array(3 * n);
  for (let i = 0; i < n; i++) { out[i] = rgba[4 * i]; out[n + i] = rgba[4 * i + 1]; out[2 * n + i] = rgba[4 * i + 2]; }
  return { bytes: out, shape: [3, img.height, img.width] };
}

async function sameImage(d, box, index) {
  const key = `t-${index}`;
  box.replaceChildren(h("p", { class: "loading" }, "predicting with each model…"));
  try {
    const pix = await pixels(imageUrl(d.runs[0].id, key));
    const cols = await Promise.all(d.runs.map(async (r, i) => {
      const p = await api(`/api/runs/${r.id}/predict?image=${key}`);
      // a model without Grad-CAM (a dense net: no conv layer) still shows its prediction beside the others
      const a = await api(`/api/runs/${r.id}/attribution?image=${key}&method=gradcam&target=${p.predicted}`)
        .catch(err => ({ map: null, why: `no Grad-CAM: ${err.message || err}` }));
      const canvas = h("canvas", { class: "pixel" }), scale = Math.max(1, Math.floor(200 / pix.shape[1]));
      if (!a.map || a.map.degenerate) drawPixels(canvas, pix.bytes, pix.shape, scale); else drawOverlay(canvas, pix.bytes, pix.shape, a.map, scale);
      const top = p.probs.map((v, k) => [v, k]).sort((x, y) => y[0] - x[0]).slice(0, 3);
      const note = a.map ? (a.map.degenerate ? `Grad-CAM is ${a.map.degenerate}` : null) : a.why;
      return h("div", { class: "one" }, chip(d, i), h("div", {}, canvas),
        note ? h("p", { class: "note" }, note) : null,
        table(["class", "p"], top.map(([v, k]) => [p.classes[k] + (k === p.label ? " ✓" : ""), fmt.pct(v)]), [1]));
    }));
    box.replaceChildren(h("div", { class: "same" }, cols));
  } catch (err) { fail(box, err); }
}

function samePanel(d) {
  if (!d.same_test_set) return panel("The same image under each model", null, h("p", { class: "hint" }, "The runs use different test sets (dataset, input shape or classes differ)."));
  const box = h("div", { id: "same-image" });
  const input = h("input", { type: "number", min: 0, value: 0, style: { width: "90px" }, "aria-label": "test image" });
  const go = h("button", { onclick: () => sameImage(d, box, +input.value) }, "Show");
  requestAnimationFrame(() => sameImage(d, box, 0));
  return panel("The same test image under each model", null, h("div", { class: "toolbar" }, "test image #", input, go,
    h("span", { class: "hint" }, "prediction and Grad-CAM of its predicted class")), box);
}

async function page() {
  if (IDS.length < 2) {
    return APP.replaceChildren(h("h1", {}, "Compare"), h("p", { class: "note" }, "Tick 2 to 4 runs in the ", h("a", { href: "/" }, "runs table"), " and press Compare."));
  }
  let d;
  try { d = await api(`/api/compare?runs=${IDS.map(encodeURIComponent).join(",")}`); } catch (err) { return fail(APP, err); }
  APP.replaceChildren(h("h1", {}, `Compare ${d.runs.length} runs`), h("p", {}, d.runs.map((_, i) => chip(d, i))),
    diffPanel(d), curves(d), h("div", { class: "split" }, perClass(d), confusionDiffs(d)), samePanel(d));
}

page();
