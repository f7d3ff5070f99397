// One unit (a channel of a layer): its kernel, the input that excites it most, and the top-9 test images.
"use strict";

async function page() {
  const RUN = DATA.run, layer = DATA.layer, unit = +DATA.unit;
  const base = `/api/runs/${RUN}/layers/${encodeURIComponent(layer)}/units/${unit}`;
  const unitUrl = k => `/runs/${RUN}/layers/${encodeURIComponent(layer)}/units/${k}`;
  APP.replaceChildren(h("h1", {}, `${layer} · unit ${unit}`), h("p", { class: "loading" }, "Scoring the test set (once per layer, then cached)…"));
  let d;
  try { d = await api(base); } catch (err) { return fail(APP, err); }
  const nav = h("p", { class: "sub" },
    unit > 0 ? h("a", { href: unitUrl(unit - 1) }, `‹ unit ${unit - 1}`) : null, "  ",
    h("span", {}, `unit ${unit} of ${d.units} in ${layer}`), "  ",
    unit + 1 < d.units ? h("a", { href: unitUrl(unit + 1) }, `unit ${unit + 1} ›`) : null, "  · ",
    h("a", { href: `/runs/${RUN}/units` }, "all filters"), " · ", h("a", { href: `/runs/${RUN}/explorer#layer-${layer}` }, "in the explorer"));
  const kernel = d.kernel ? (() => {
    const [c, kh, kw] = d.kernel.shape, vals = f32(d.kernel.data);
    const m = vals.reduce((a, v) => Math.max(a, Math.abs(v)), 0) || 1, scale = Math.max(4, Math.floor(44 / Math.max(kh, kw)));
    const maps = [];
    for (let i = 0; i < Math.min(c, 64); i++) maps.push(h("span", { title: `input channel ${i}` }, drawMap(h("canvas", {}), vals, i * kh * kw, kh, kw, -m, m, scale)));
    return panel("Kernel", d.commands.filters,
      h("p", { class: "hint" }, `${c} input channel${c > 1 ? "s" : ""} × ${kh}×${kw}, bias ${fmt.g(d.kernel.bias)}; blue negative, red positive, one scale.` +
        (c > 64 ? ` First 64 of ${c} shown.` : "")),
      h("div", { class: "filters" }, maps),
      c === 1 ? h("div", { class: "math" }, h("table", {}, h("tbody", {}, Array.from({ length: kh }, (_, r) => h("tr", {},
        Array.from({ length: kw }, (_, q) => h("td", {}, fmt.g(vals[r * kw + q])))))))) : null);
  })() : null;
  const img = h("img", { class: "max", alt: `input maximising ${layer} unit ${unit}`, id: "maximize" });
  const maxNote = h("p", { class: "hint" }, "Gradient ascent on the input (jitter + blur), 128 steps: computing…");
  img.addEventListener("load", () => { maxNote.textContent = "The input that excites this unit most (mean activation), synthesised by gradient ascent; cached."; });
  img.addEventListener("error", () => { maxNote.textContent = "Could not compute it (see the server log)."; });
  img.src = `${base}/maximize`;
  const top = h("div", { class: "thumbs", id: "top-images" }, d.top.map(t => h("a", { class: "thumb", href: `/runs/${RUN}/explorer?image=t-${t.index}#layer-${layer}` },
    h("img", { src: imageUrl(RUN, `t-${t.index}`, 3), alt: `test image ${t.index}`, loading: "lazy" }),
    h("div", {}, h("b", {}, `#${t.index}`), ` ${d.classes[t.label]}`), h("div", {}, `mean act. ${fmt.g(t.score)}`))));
  APP.replaceChildren(h("h1", {}, `${layer} · unit ${unit}`), nav,
    h("div", { class: "unit" },
      h("div", {}, panel("Activation maximisation", d.commands.maximize, img, maxNote)),
      h("div", {}, panel(`Top ${d.top.length} test images`, null,
        h("p", { class: "hint" }, "The test images with the largest mean activation of this unit (its response averaged over the map)."), top),
        kernel)));
}

page();
