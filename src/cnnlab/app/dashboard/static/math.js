// The arithmetic of one output value, with the real numbers (the first tutorial's kernel demo, generalised):
// conv, pooling, activation / batch norm, dense units and the softmax. Used by the explorer.
"use strict";

const n4 = v => (v === null || v === undefined ? "pad" : fmt.g(v));

function numTable(rows, mark) {
  return h("table", {}, h("tbody", {}, rows.map((r, i) => h("tr", {}, r.map((v, j) =>
    h("td", { style: mark && mark[0] === i && mark[1] === j ? { background: "#ffe3a3", fontWeight: "600" } : null }, n4(v)))))));
}

function verdict(m) {
  if (m.actual === null || m.actual === undefined) return null;
  const ok = Math.abs(m.output - m.actual) <= 1e-4 * Math.max(1, Math.abs(m.actual));
  return h("div", { class: ok ? "eq ok" : "eq bad" },
    ok ? `✓ the layer itself produced ${fmt.g(m.actual)} (float32)` : `✗ the layer produced ${fmt.g(m.actual)}: this layer does more than shown`);
}

function kernelMaps(kernel) {
  // kernel: (C_in, kh, kw) nested lists → small coolwarm maps on one scale, up to 32 input channels
  const flat = kernel.flat(2), m = Math.max(...flat.map(Math.abs)) || 1;
  return h("div", { class: "filters" }, kernel.slice(0, 32).map((k, i) => {
    const vals = new Float32Array(k.flat());
    const c = drawMap(h("canvas", {}), vals, 0, k.length, k[0].length, -m, m, Math.max(4, Math.floor(36 / k.length)));
    return h("span", { title: `input channel ${i}` }, c);
  }), kernel.length > 32 ? h("span", { class: "hint" }, `+${kernel.length - 32} more`) : null);
}

function convMath(m) {
  const order = m.channel_sums.map((s, i) => [Math.abs(s), i]).sort((a, b) => b[0] - a[0]).map(x => x[1]);
  const show = order.slice(0, m.channel_sums.length <= 4 ? 4 : 3);
  const rest = m.channel_sums.reduce((a, s, i) => (show.includes(i) ? a : a + s), 0);
  const blocks = show.map(i => h("div", {},
    h("div", { class: "hint" }, `input channel ${m.input_channels[i]}: Σ = ${fmt.g(m.channel_sums[i])}`),
    h("div", { class: "row" }, h("div", {}, h("div", { class: "hint" }, "input patch"), numTable(m.patch[i])),
      h("div", {}, h("div", { class: "hint" }, "× kernel"), numTable(m.kernel[i])),
      h("div", {}, h("div", { class: "hint" }, "= products"), numTable(m.products[i])))));
  const others = m.channel_sums.length - show.length;
  const total = m.channel_sums.reduce((a, b) => a + b, 0);
  const act = m.activation === "linear" ? "" : `${m.activation}(`;
  return h("div", { class: "math" },
    h("div", { class: "eq" }, `out[${m.channel}, ${m.row}, ${m.col}] = ${act}Σ over ${m.channel_sums.length} input channel${m.channel_sums.length > 1 ? "s" : ""} of patch × kernel + bias${act ? ")" : ""}`),
    h("div", { class: "hint" }, `patch top-left at input (${m.origin[0]}, ${m.origin[1]})` + (m.step[0] > 1 || m.step[1] > 1 ? `, every ${m.step.join("×")} pixels` : "") + "; 'pad' = zero padding"),
    h("h3", {}, "Kernel of this filter"), kernelMaps(m.kernel),
    ...blocks,
    others ? h("div", { class: "eq" }, `… the other ${others} input channels add ${fmt.g(rest)}`) : null,
    h("div", { class: "eq" }, `sum of products = ${fmt.g(total)}\n+ bias ${fmt.g(m.bias)} = ${fmt.g(m.pre_activation)}` +
      (act ? `\n${m.activation}(${fmt.g(m.pre_activation)}) = ${fmt.g(m.output)}` : "")),
    verdict(m));
}

function poolMath(m) {
  return h("div", { class: "math" },
    h("div", { class: "eq" }, `out[${m.channel}, ${m.row}, ${m.col}] = ${m.pool === "max" ? "max" : "mean"} of the window at input (${m.origin[0]}, ${m.origin[1]})`),
    numTable(m.window, m.winner),
    h("div", { class: "eq" }, `= ${fmt.g(m.output)}` + (m.pool === "max" ? " (highlighted)" : "")), verdict(m));
}

function elementMath(m) {
  return h("div", { class: "math" },
    h("div", { class: "eq" }, `out[${m.index.join(", ")}] = ${m.function}: ${m.formula}`),
    h("div", { class: "eq" }, `x = ${fmt.g(m.input)} → ${fmt.g(m.output)}`), verdict(m));
}

function denseMath(m) {
  const rows = m.terms.map(t => [`x[${t[0]}]`, fmt.g(t[1]), fmt.g(t[2]), fmt.g(t[3])]);
  const act = m.activation === "linear" ? "" : m.activation;
  return h("div", { class: "math" },
    h("div", { class: "eq" }, `unit ${m.unit} = ${act ? act + "(" : ""}Σ of ${fmt.int(m.inputs)} inputs × weights + bias${act ? ")" : ""}`),
    table(["input", "value", "weight", "product"], rows, [1, 2, 3]),
    h("div", { class: "eq" }, `… the other ${Math.max(0, m.inputs - m.terms.length)} products add ${fmt.g(m.rest)}\n+ bias ${fmt.g(m.bias)} = ${fmt.g(m.pre_activation)}` +
      (act ? `\n${act}(${fmt.g(m.pre_activation)}) = ${fmt.g(m.output)}` : "")),
    verdict(m));
}

function softmaxMath(m) {
  const rows = m.classes.map((c, i) => [c, fmt.g(m.logits[i]), fmt.g(m.shifted[i]), fmt.g(m.exps[i]), fmt.pct(m.probs[i])]);
  return h("div", { class: "math" },
    h("div", { class: "eq" }, "p_i = exp(z_i − max z) / Σ_j exp(z_j − max z)"),
    table(["class", "logit z", "z − max", "exp", "probability"], rows, [1, 2, 3, 4]),
    h("div", { class: "eq" }, `Σ exp = ${fmt.g(m.total)}`));
}

function renderMath(m) {
  return { conv: convMath, pool: poolMath, element: elementMath, dense: denseMath, softmax: softmaxMath }[m.kind](m);
}
