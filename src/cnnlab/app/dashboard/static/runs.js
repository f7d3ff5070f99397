// The runs table: sort by any column, filter by words and by expressions, tick 2–4 runs to compare.
"use strict";

const state = { sort: "started", desc: true, q: "", where: "", picked: new Set(), columns: {}, seq: 0, running: false, stale: false };
const NUMERIC = new Set(["params", "epochs", "best_val_acc", "best_epoch", "test_acc", "wall_seconds"]);

function cell(col, r) {
  switch (col) {
    case "name": return h("td", { class: "name" },
      r.status === "broken" ? h("span", { title: r.error || "" }, r.name) : h("a", { href: `/runs/${r.id}` }, r.name),
      r.group ? h("span", { class: "group" }, "  in compare") : null);
    case "status": return h("td", { title: r.error || "" }, statusPill(r.status));
    case "params": return h("td", { class: "num" }, fmt.int(r.params));
    case "epochs": return h("td", { class: "num" }, r.epochs === null ? "–" : `${r.epochs} / ${r.epochs_planned ?? "?"}`);
    case "best_val_acc": return h("td", { class: "num", title: r.monitor ? `best epoch by ${r.monitor}` : null }, fmt.pct(r.best_val_acc));
    case "best_epoch": return h("td", { class: "num" }, r.best_epoch ?? "–");
    case "test_acc": return h("td", { class: "num" }, fmt.pct(r.test_acc));
    case "wall_seconds": return h("td", { class: "num" }, fmt.dur(r.wall_seconds));
    case "started": return h("td", {}, fmt.when(r.started));
    default: return h("td", {}, r[col] ?? "–");
  }
}

function render(data) {
  state.columns = data.columns;
  const tbl = $("#table");
  const head = h("tr", {}, h("th", {}, ""), Object.entries(data.columns).map(([col, label]) =>
    h("th", {
      class: [NUMERIC.has(col) ? "num" : "", state.sort === col ? "sorted" : "", state.sort === col && !state.desc ? "asc" : ""].join(" "),
      onclick: () => { state.desc = state.sort === col ? !state.desc : col !== "name"; state.sort = col; load(); },
    }, label)));
  const body = data.rows.map(r => h("tr", { class: r.status === "broken" ? "broken" : null, "data-id": r.id },
    h("td", {}, h("input", {
      type: "checkbox", checked: state.picked.has(r.id), disabled: r.status === "broken", "aria-label": `compare ${r.name}`,
      onchange: e => { e.target.checked ? state.picked.add(r.id) : state.picked.delete(r.id); pickCount(); },
    })),
    Object.keys(data.columns).map(col => cell(col, r))));
  // the table is rebuilt on every refresh: keep the keyboard focus on the same run's checkbox or link
  const active = tbl.contains(document.activeElement) ? document.activeElement : null;
  const focusId = active?.closest("tr")?.dataset.id, focusTag = active?.tagName === "INPUT" ? "input" : "a";
  tbl.replaceChildren(h("thead", {}, head), h("tbody", {}, body));
  if (focusId) tbl.querySelector(`tr[data-id="${CSS.escape(focusId)}"] ${focusTag}`)?.focus();
  if (data.rows.length === data.total) {  // every run is listed: a tick on a run that is gone is dropped
    const listed = new Set(data.rows.map(r => r.id));
    for (const id of [...state.picked]) if (!listed.has(id)) state.picked.delete(id);
  }
  $("#count").textContent = `${data.rows.length} of ${data.total} runs · listed in ${(1000 * data.seconds).toFixed(0)} ms`;
  $("#empty").hidden = data.total > 0;
  pickCount();
  // a running row changes every few seconds; otherwise poll slowly, so that a run started after this page
  // opened (in a terminal, by another user) appears without a reload, as in TensorBoard
  state.running = data.rows.some(r => r.status === "running");
  poll();
}

// the next refresh; a hidden tab skips it and refreshes when it is shown again
function poll() {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => { if (document.hidden) state.stale = true; else load(); }, state.running ? 3000 : 15000);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.stale) { state.stale = false; load(); }
});

function pickCount() {
  const n = state.picked.size, btn = $("#compare");
  btn.disabled = n < 2 || n > 4;
  btn.textContent = n ? `Compare ${n} run${n > 1 ? "s" : ""}` : "Compare";
  btn.title = n < 2 || n > 4 ? "tick 2 to 4 runs" : "";
}

async function load() {
  const params = new URLSearchParams({ q: state.q, where: state.where, sort: state.sort, desc: state.desc });
  const seq = ++state.seq;  // a slow answer to an older request (a refresh, a shorter filter) is dropped
  try {
    const data = await api(`/api/runs?${params}`);
    if (seq !== state.seq) return;
    render(data);
    $("#filter-error").hidden = true;
  } catch (err) {
    if (seq !== state.seq) return;
    $("#filter-error").hidden = false;
    $("#filter-error").textContent = err.message;
    poll();  // a bad filter, or a server that was busy or restarting: try again, keeping what is shown
  }
}

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }

function page() {
  const q = h("input", { type: "search", placeholder: "search name, model, dataset…", "aria-label": "search" });
  const where = h("input", { type: "text", class: "expr", placeholder: "filter: val_acc > 0.9, model = cnn_64x2", "aria-label": "filter expression" });
  const reload = debounce(load, 150);
  q.addEventListener("input", () => { state.q = q.value; reload(); });
  where.addEventListener("input", () => { state.where = where.value; reload(); });
  const compare = h("button", { id: "compare", disabled: true, onclick: () => { location.href = `/compare?runs=${[...state.picked].join(",")}`; } }, "Compare");
  APP.replaceChildren(
    h("h1", {}, "Runs ", h("span", { class: "sub" }, `in ${DATA.root}`)),
    h("div", { class: "toolbar" }, q, where, compare, h("span", { id: "count", class: "count" })),
    h("p", { id: "filter-error", class: "error", hidden: true }),
    h("p", { id: "empty", class: "note", hidden: true }, `No runs under ${DATA.root} yet: train one with `,
      h("code", {}, `cnnlab train --config fashion_mnist_cnn --out ${DATA.root}/fashion_mnist_cnn`)),
    h("table", { id: "table", class: "runs" }),
    h("p", { class: "hint" }, "Best val acc is the validation accuracy at the best epoch by the run's monitor (the epoch checkpoints/best holds). ",
      "Filters: COLUMN OP VALUE joined by 'and' — OP is > >= < <= = != ~ (contains); columns: val_acc, test_acc, model, dataset, status, epochs, params, name, …"));
  load();
}

page();
