// One confusion-matrix cell: its test images, highest loss (most confident mistakes) first.
"use strict";

async function page() {
  const RUN = DATA.run, t = +DATA.true, p = +DATA.pred;
  let d;
  try { d = await api(`/api/runs/${RUN}/confusion/${t}/${p}`); } catch (err) { return fail(APP, err); }
  const cls = d.classes, right = t === p;
  const title = right ? `${cls[t]}: correctly classified` : `true ${cls[t]} → predicted ${cls[p]}`;
  const notes = [];
  if (d.count_results !== null && d.count_results !== d.count) {
    notes.push(h("p", { class: "note" }, `The matrix on the run page (results.json, evaluated in the training precision) counts ${d.count_results}; ` +
      `the fp32 re-evaluation used here finds ${d.count}.`));
  }
  const items = d.images.map(im => h("a", { class: "thumb", href: `/runs/${RUN}/explorer?image=t-${im.index}`, title: `open test image ${im.index} in the explorer` },
    h("img", { src: imageUrl(RUN, `t-${im.index}`, 3), alt: `test image ${im.index}`, loading: "lazy" }),
    h("div", {}, h("b", {}, `#${im.index}`), ` loss ${fmt.num(im.loss, 2)}`),
    h("div", { class: right ? null : "wrong" }, right ? `p=${fmt.num(im.p_true, 2)}` : `p(${cls[p]})=${fmt.num(im.p_pred, 2)}`)));
  APP.replaceChildren(
    h("h1", {}, title),
    h("p", { class: "sub" }, `${d.count} test image${d.count === 1 ? "" : "s"}` + (d.images.length < d.count ? ` (the first ${d.images.length} shown)` : "") +
      (right ? ", least confident first." : ", most confident mistakes first (highest loss)."), " ",
      h("a", { href: `/runs/${RUN}` }, "back to the run")),
    ...notes,
    panel("Images", d.command, d.count ? h("div", { class: "thumbs", id: "cell-images" }, items)
      : h("p", { class: "hint" }, "No test image falls in this cell.")));
}

page();
