// The layer diagram: output shapes and parameter counts; each node links to that layer's maps and filters.
"use strict";

async function page() {
  const RUN = DATA.run;
  let d;
  try { d = await api(`/api/runs/${RUN}/architecture`); } catch (err) { return fail(APP, err); }
  const boxes = [];
  d.rows.forEach((r, i) => {
    if (i) boxes.push(h("div", { class: "arrow" }, "↓"));
    const links = r.name === "input" ? [] : [h("a", { href: `/runs/${RUN}/explorer#layer-${r.name}` }, r.shape && r.shape.length === 3 ? "maps" : "outputs")];
    if (r.units) links.push(" · ", h("a", { href: `/runs/${RUN}/units#units-${r.name}` }, "filters"));
    boxes.push(h("div", { class: `box ${r.kind}`, "data-layer": r.name },
      h("div", {}, h("b", {}, r.name), " ", h("span", { class: "hint" }, r.type)),
      h("div", { class: "shape" }, r.output_shape),
      h("div", { class: "links" }, links),
      h("div", { class: "shape" }, r.params ? `${fmt.int(r.params)} params` : "")));
  });
  APP.replaceChildren(h("h1", {}, "Architecture"),
    h("p", { class: "sub" }, `${d.rows.length - 1} layers in the order the forward pass runs them · ${fmt.int(d.total_params)} parameters · shapes as Keras prints them (None, H, W, C)`),
    panel("Layers", d.command, h("div", { class: "arch" }, boxes)));
}

page();
