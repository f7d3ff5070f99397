// Units: every conv layer's learned filters; each filter links to its unit page.
"use strict";

async function page() {
  const RUN = DATA.run;
  let d;
  try { d = await api(`/api/runs/${RUN}/layers`); } catch (err) { return fail(APP, err); }
  if (!d.layers.length) {
    return APP.replaceChildren(h("h1", {}, "Units"), h("p", { class: "note" }, "This model has no convolution layers: its units are dense units, shown in the explorer."));
  }
  const sections = d.layers.map(layer => {
    const [o, c, kh, kw] = layer.filters_shape, vals = f32(layer.filters);
    const m = vals.reduce((a, v) => Math.max(a, Math.abs(v)), 0) || 1;
    const scale = Math.max(3, Math.floor(40 / Math.max(kh, kw)));
    const cells = [];
    for (let k = 0; k < o; k++) {
      const canvas = h("canvas", {});
      if (c === 3) {  // RGB kernel: min-max over the layer, in colour
        const lo = Math.min(...vals), hi = Math.max(...vals), bytes = new Uint8Array(3 * kh * kw);
        for (let i = 0; i < 3 * kh * kw; i++) bytes[i] = Math.round(255 * (vals[k * 3 * kh * kw + i] - lo) / (hi - lo || 1));
        drawPixels(canvas, bytes, [3, kh, kw], scale);
      } else drawMap(canvas, vals, k * kh * kw, kh, kw, -m, m, scale);
      cells.push(h("a", { href: `/runs/${RUN}/layers/${encodeURIComponent(layer.name)}/units/${k}`, title: `${layer.name} unit ${k}` }, canvas, h("span", {}, k)));
    }
    return h("div", { class: "layer", id: `units-${layer.name}` },
      h("div", { class: "title" }, h("b", {}, layer.name), h("span", { class: "kind conv" }, "conv"),
        h("span", { class: "hint" }, `${layer.type} · kernels ${layer.kernel.join("×")} (out × in × h × w) · shown: ${layer.how}, blue negative, red positive`)),
      h("div", { class: "filters" }, cells));
  });
  APP.replaceChildren(h("h1", {}, "Units"),
    h("p", { class: "sub" }, "The learned filters of every convolution layer. Open a unit for its kernel, the image that excites it most " +
      "(activation maximisation) and the 9 test images it responds to most."),
    panel("Filters", d.command, ...sections));
}

page();
