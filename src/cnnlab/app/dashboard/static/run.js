// One run: facts, live curves (server-sent events), results with a clickable confusion matrix, config,
// summary, data report, figures and downloads.
"use strict";

const RUN = DATA.run;
const charts = {};
let history = [];

function cards(d) {
  const r = d.row, meta = d.meta || {};
  const items = [
    ["test accuracy", fmt.pct(r.test_acc)],
    [`val acc at the best epoch (${r.best_epoch ?? "–"}, by ${r.monitor ?? "–"})`, fmt.pct(r.best_val_acc)],
    ["epochs done / planned", r.epochs === null ? "–" : `${r.epochs} / ${r.epochs_planned ?? "?"}`],
    ["parameters", fmt.int(r.params)],
    ["wall time", fmt.dur(r.wall_seconds)],
  ];
  const div = h("div", { class: "cards" }, items.map(([k, v]) => h("div", { class: "card" }, h("b", {}, v), h("span", {}, k))));
  const notes = [];
  if (r.error) notes.push(h("p", { class: r.status === "failed" || r.status === "broken" ? "error" : "note" }, r.error));
  if (meta.stop_reason) notes.push(h("p", { class: "note" }, `Stopped early: ${meta.stop_reason}`));
  return [div, ...notes];
}

// ------------------------------------------------------------------------------------------ live curves

function columns(hist) {
  const x = hist.map(m => m.epoch), col = k => hist.map(m => m[k] ?? null);
  return { x, loss: [col("train_loss"), col("val_loss")], acc: [col("train_acc"), col("val_acc")], lr: [col("lr")] };
}

function curvesPanel(d) {
  const box = h("div", { class: "charts" });
  const bar = h("div", { class: "progress", hidden: true }, h("div", { class: "hint", id: "progress-text" }),
    h("div", { class: "track" }, h("div", { class: "fill", id: "progress-fill", style: { width: "0%" } })));
  const epochs = h("tbody", { id: "epochs" });
  const first = history.length ? null : h("p", { class: "hint", id: "no-epoch" }, "The first point appears when epoch 1 ends.");
  const wrap = h("div", { id: "curves", "data-epochs": String(history.length) }, bar, first, box,
    h("details", {}, h("summary", {}, "every epoch"), h("table", {},
      h("thead", {}, h("tr", {}, ["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"].map(t => h("th", { class: "num" }, t)))),
      epochs)));
  const p = panel("Learning curves", d.commands.curves, wrap);
  const slots = [h("div", { class: "chart" }), h("div", { class: "chart" }), h("div", { class: "chart" })];
  box.append(...slots);
  requestAnimationFrame(() => {  // once laid out: each chart takes its grid cell's width
    const c = columns(history);
    const mk = (el, title, cols, labels) => lineChart(el, title, c.x, cols.map((v, i) => ({ label: labels[i], values: v })));
    charts.loss = mk(slots[0], "Loss", c.loss, ["train", "validation"]);
    charts.acc = mk(slots[1], "Accuracy", c.acc, ["train", "validation"]);
    charts.lr = mk(slots[2], "Learning rate", c.lr, ["lr"]);
    history.forEach(m => epochs.append(epochRow(m)));
  });
  charts.rows = epochs;
  return p;
}

function epochRow(m) {
  return h("tr", {}, [m.epoch, fmt.num(m.train_loss), fmt.pct(m.train_acc), fmt.num(m.val_loss), fmt.pct(m.val_acc),
    fmt.g(m.lr), fmt.num(m.seconds, 1)].map(v => h("td", { class: "num" }, v)));
}

function addEpoch(m) {
  history.push(m);
  $("#no-epoch")?.remove();
  charts.loss?.push(m.epoch, m.train_loss ?? null, m.val_loss ?? null);
  charts.acc?.push(m.epoch, m.train_acc ?? null, m.val_acc ?? null);
  charts.lr?.push(m.epoch, m.lr ?? null);
  charts.rows?.append(epochRow(m));
  $("#curves").dataset.epochs = String(history.length);
}

function resetHistory(rows) {
  history = rows.slice();
  const c = columns(history);
  charts.loss?.reset(c.x, ...c.loss);
  charts.acc?.reset(c.x, ...c.acc);
  charts.lr?.reset(c.x, ...c.lr);
  charts.rows?.replaceChildren(...history.map(epochRow));
  $("#curves").dataset.epochs = String(history.length);
}

function showProgress(p) {
  const box = $(".progress");
  if (!box) return;
  box.hidden = false;
  const frac = p.batches ? p.batch / p.batches : 0;
  $("#progress-fill").style.width = (100 * frac).toFixed(1) + "%";
  $("#progress-text").textContent = p.phase === "finished" ? "training finished"
    : `epoch ${p.epoch} of ${p.epochs}: batch ${p.batch} of ${p.batches} (${p.phase}, ${fmt.num(p.epoch_seconds, 1)} s)`;
}

function listen(d) {
  const es = new EventSource(`/api/runs/${RUN}/events`);
  let first = true;
  es.addEventListener("epoch", e => {
    const m = JSON.parse(e.data);
    if (!history.some(x => x.epoch === m.epoch)) addEpoch(m);
  });
  es.addEventListener("reset", e => resetHistory(JSON.parse(e.data)));
  es.addEventListener("progress", e => showProgress(JSON.parse(e.data)));
  es.addEventListener("status", e => {
    const s = JSON.parse(e.data);
    const pill = $("h1 .status");
    if (pill) { pill.className = `status ${s}`; pill.textContent = s; }
    if (!first && s !== "running") setTimeout(() => location.reload(), 800);  // results, summary now exist
    first = false;
  });
  es.addEventListener("end", () => { es.close(); if (d.row.status !== "running") $(".progress")?.setAttribute("hidden", ""); });
}

// ------------------------------------------------------------------------------------------ results

function confusionTable(res) {
  const classes = res.classes, conf = res.confusion;
  const short = classes.map(c => (c.length > 8 ? c.slice(0, 7) + "…" : c));
  const head = h("tr", {}, h("th", {}, "true \\ predicted"), short.map((s, j) => h("th", { title: classes[j] }, s)));
  const rows = conf.map((row, i) => {
    const total = Math.max(1, row.reduce((a, b) => a + b, 0));
    return h("tr", {}, h("th", { class: "true", title: classes[i] }, short[i]), row.map((v, j) => {
      const share = v / total, alpha = i === j ? share : Math.min(1, 4 * share);
      const bg = v ? (i === j ? `rgba(46,125,79,${alpha.toFixed(2)})` : `rgba(192,57,43,${alpha.toFixed(2)})`) : "";
      return h("td", { style: { background: bg, color: alpha > 0.55 ? "#fff" : v ? "#1d2330" : "#b8bec7" } },
        h("a", { href: `/runs/${RUN}/confusion/${i}/${j}`, title: `${classes[i]} → ${classes[j]}: ${v} (open the images)` }, v));
    }));
  });
  return h("table", { class: "confusion" }, h("thead", {}, head), h("tbody", {}, rows));
}

function resultsPanels(d) {
  const res = d.results;
  if (!res) return [panel("Results", d.commands.results, h("p", { class: "hint" }, "results.json is written when training finishes."))];
  const per = Object.entries(res.per_class).map(([c, a], i) => {
    const row = res.confusion[i], total = row.reduce((x, y) => x + y, 0);
    return [c, fmt.int(row[i]), fmt.int(total), fmt.pct(a), h("span", { class: "bar" }, h("i", { style: { width: (100 * a).toFixed(1) + "%" } }))];
  });
  return [h("div", { class: "split" },
    panel("Per-class accuracy", d.commands.results,
      h("p", { class: "hint" }, `test accuracy ${fmt.pct(res.test_acc)}, loss ${fmt.num(res.test_loss)}`),
      table(["class", "correct", "images", "accuracy", ""], per, [1, 2, 3])),
    panel("Confusion matrix", d.commands.confusion,
      h("p", { class: "hint" }, "Rows: true class; columns: predicted. Every cell opens its test images, most confident mistakes first."),
      h("div", { class: "scroll" }, confusionTable(res))))];
}

function dataPanel(d) {
  const rep = d.data_report;
  if (!rep) return panel("Data report", null, h("p", { class: "hint" }, `${d.row.dataset}: a registered dataset read from its official files; no image was skipped.`));
  const skipped = rep.skipped || [];
  return panel("Data report", null,
    h("p", {}, `${rep.source}: ${fmt.int(rep.images)} images, labels from ${rep.labels}; ${skipped.length} file${skipped.length === 1 ? "" : "s"} skipped.`),
    skipped.length ? table(["file", "why"], skipped.slice(0, 500).map(s => [s.file, s.reason])) : null,
    skipped.length > 500 ? h("p", { class: "hint" }, `… and ${skipped.length - 500} more (data_report.json)`) : null);
}

function filesPanel(d) {
  const figs = d.figures.length
    ? h("div", { class: "figures" }, d.figures.map(f => h("a", { href: `/runs/${RUN}/figures/${f}`, target: "_blank" },
      h("img", { src: `/runs/${RUN}/figures/${f}`, alt: f, loading: "lazy" }), f)))
    : h("p", { class: "hint" }, "No figures yet: draw them with the command above.");
  const dl = d.downloads.length
    ? h("ul", {}, d.downloads.map(f => h("li", {}, h("a", { href: `/runs/${RUN}/files/${f.name}`, download: f.name.endsWith(".html") ? null : f.name }, f.name),
      h("span", { class: "hint" }, ` ${(f.bytes / 1024).toFixed(0)} kB`))))
    : h("p", { class: "hint" }, "No model.safetensors, model.onnx or report.html yet.");
  return h("div", { class: "grid2" }, panel("Figures", d.commands.figures, figs),
    panel("Downloads", d.commands.export, dl, h("p", { class: "hint" }, "report.html is written by ", h("code", {}, d.commands.report))));
}

async function page() {
  let d;
  try { d = await api(`/api/runs/${RUN}`); } catch (err) { return fail(APP, err); }
  history = d.history;
  const r = d.row;
  APP.replaceChildren(
    h("h1", {}, r.name, statusPill(r.status)),
    h("p", { class: "sub" }, [r.dataset, r.model, `started ${fmt.when(r.started)}`, d.path].filter(Boolean).join(" · "),
      r.group ? ` · part of the compare folder ${r.group}` : ""),
    ...cards(d),
    curvesPanel(d),
    ...resultsPanels(d),
    h("div", { class: "grid2" },
      panel("Config", null, h("pre", {}, d.config ?? "(config.yaml missing)")),
      panel("Summary", d.commands.summary, h("pre", {}, d.summary ?? "summary.txt is written when training finishes."))),
    dataPanel(d),
    filesPanel(d));
  if (d.progress && r.status === "running") showProgress(d.progress);
  listen(d);
}

page();
