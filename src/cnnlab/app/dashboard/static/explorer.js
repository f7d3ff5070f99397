// The explorer: CNN Explainer for any run. Pick a test image, upload one or draw one; see the probabilities
// and every layer's channels in model order; click a channel for its kernel and one pixel's arithmetic;
// ask for Grad-CAM, saliency, integrated gradients or occlusion for any class.
"use strict";

const RUN = DATA.run;
const S = { key: null, data: null, target: null, page: 0, label: "" };
const TILE = 56;

// ------------------------------------------------------------------------------------------- picking

async function pickTests(box) {
  const params = new URLSearchParams({ offset: S.page * 60, limit: 60 });
  if (S.label !== "") params.set("label", S.label);
  try {
    const d = await api(`/api/runs/${RUN}/test-images?${params}`);
    S.classes = d.classes; S.shape = d.input_shape;
    const sel = h("select", { "aria-label": "class", onchange: e => { S.label = e.target.value; S.page = 0; pickTests(box); } },
      h("option", { value: "" }, "all classes"), d.classes.map((c, i) => h("option", { value: i, selected: String(i) === S.label }, c)));
    const pages = Math.ceil(d.total / 60);
    box.replaceChildren(h("div", { class: "toolbar" }, sel,
      h("button", { class: "ghost", disabled: S.page === 0, onclick: () => { S.page--; pickTests(box); } }, "‹"),
      h("span", { class: "hint" }, `${S.page + 1}/${pages}`),
      h("button", { class: "ghost", disabled: S.page + 1 >= pages, onclick: () => { S.page++; pickTests(box); } }, "›")),
      h("div", { class: "thumbs" }, d.images.map(im => h("a", {
        class: "thumb" + (S.key === `t-${im.index}` ? " on" : ""), href: `?image=t-${im.index}`, title: `#${im.index} ${d.classes[im.label]}`,
        onclick: e => { e.preventDefault(); select(`t-${im.index}`); },
      }, h("img", { src: imageUrl(RUN, `t-${im.index}`, 2), alt: `test image ${im.index}`, loading: "lazy" })))));
    drawTab(d.input_shape);
  } catch (err) { fail(box, err); }
}

async function upload(blob) {
  const status = $("#upload-status");
  status.textContent = "decoding…";
  try {
    const d = await api(`/api/runs/${RUN}/upload`, { method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } });
    status.textContent = `decoded to ${d.shape.join("×")} by cnnlab's decoder`;
    select(d.key);
  } catch (err) { status.textContent = ""; status.append(h("span", { class: "error" }, err.message)); }
}

function uploadBox() {
  const input = h("input", { type: "file", id: "upload-file", accept: "image/*", onchange: e => e.target.files[0] && upload(e.target.files[0]) });
  const drop = h("div", { class: "drop" }, "Drop an image here, or ", input);
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
  return h("div", {}, drop, h("p", { class: "hint", id: "upload-status" }, "PNG, JPEG, BMP, GIF or WebP, up to 20 MB; resized to the run's input."));
}

function drawBox() {
  const pad = h("canvas", { class: "pad", width: 280, height: 280 });
  const ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 280, 280); };
  clear();
  let down = false, last = null;
  const at = e => { const r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * 280 / r.width, (e.clientY - r.top) * 280 / r.height]; };
  pad.addEventListener("pointerdown", e => { down = true; last = at(e); pad.setPointerCapture(e.pointerId); });
  pad.addEventListener("pointerup", () => { down = false; });
  pad.addEventListener("pointermove", e => {
    if (!down) return;
    const p = at(e);
    Object.assign(ctx, { strokeStyle: "#fff", lineWidth: 22, lineCap: "round", lineJoin: "round" });
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke(); last = p;
  });
  return h("div", {}, pad, h("div", { class: "toolbar" },
    h("button", { onclick: () => pad.toBlob(upload, "image/png") }, "Use the drawing"),
    h("button", { class: "ghost", onclick: clear }, "Clear")),
    h("p", { class: "hint" }, "White on black, like MNIST; sent as a PNG through the same decoder as uploads."));
}

function drawTab(shape) {
  const ok = shape && shape[0] === 1 && shape[1] === 28 && shape[2] === 28;
  $("#mode-draw").hidden = !ok;
}

function chooser() {
  const body = h("div", { id: "picker-body" });
  const modes = { test: ["Test images", () => pickTests(body)], upload: ["Upload", () => body.replaceChildren(uploadBox())],
    draw: ["Draw", () => body.replaceChildren(drawBox())] };
  const bar = h("div", { class: "modes" }, Object.entries(modes).map(([k, [label, show]]) => h("button", {
    id: `mode-${k}`, hidden: k === "draw",
    onclick: e => { $$(".modes button").forEach(b => b.classList.remove("on")); e.target.classList.add("on"); show(); },
  }, label)));
  bar.firstChild.classList.add("on");
  modes.test[1]();
  return panel("Image", null, h("div", { class: "picker" }, bar, body));
}

// ------------------------------------------------------------------------------------------- results

async function select(key) {
  S.key = key; S.target = null;
  history.replaceState(null, "", `?image=${encodeURIComponent(key)}`);
  $$(".thumb").forEach(t => t.classList.toggle("on", t.getAttribute("href") === `?image=${key}`));
  const layers = $("#layers");
  layers.replaceChildren(h("p", { class: "loading" }, "Running the model…"));
  try { S.data = await api(`/api/runs/${RUN}/explore?image=${encodeURIComponent(key)}`); } catch (err) { return fail(layers, err); }
  S.target = S.data.predicted;
  $("#layers-cmd").replaceChildren(cmdLine(S.data.command));
  showPrediction();
  showLayers();
  attribution();
}

function showPrediction() {
  const d = S.data, img = d.image;
  const canvas = h("canvas", { class: "pixel", id: "input-image" });
  drawPixels(canvas, b64bytes(img.data), img.shape, Math.max(1, Math.floor(168 / img.shape[1])));
  const order = d.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
  const rows = order.map(([p, i]) => h("tr", {
    class: [i === d.predicted ? "top" : "", i === S.target ? "target" : ""].join(" "), title: "click: explain this class",
    onclick: () => { S.target = i; showPrediction(); attribution(); },
  }, h("td", {}, d.classes[i] + (i === img.label ? " (true)" : "")), h("td", { class: "num" }, fmt.pct(p)),
    h("td", { style: { width: "45%" } }, h("div", { class: "pbar" }, h("i", { style: { width: (100 * p).toFixed(1) + "%" } })))));
  const math = h("div", { id: "softmax-math" });
  const why = h("button", { class: "ghost", onclick: async () => {
    try { math.replaceChildren(renderMath(await api(`/api/runs/${RUN}/arithmetic?image=${S.key}&layer=softmax`))); } catch (err) { fail(math, err); }
  } }, "How the logits become these probabilities");
  const label = img.label === null ? "your image" : `test image ${img.key.slice(2)}, true class ${d.classes[img.label]}`;
  $("#prediction").replaceChildren(panel("Prediction", d.predict_command, h("p", { class: "hint" }, label), canvas,
    h("table", { class: "probs", id: "probs" }, h("tbody", {}, rows)), why, math));
}

function tiles(layer, values) {
  const box = h("div", { class: "channels" });
  const scale = Math.max(1, Math.floor(TILE / Math.max(layer.h, layer.w)));
  for (let k = 0; k < layer.channels; k++) {
    const c = drawMap(h("canvas", {}), values, k * layer.h * layer.w, layer.h, layer.w, layer.lo, layer.hi, scale);
    if (layer.h * scale > 72) { c.style.width = "72px"; c.style.height = "auto"; }
    const flat = layer.notes[k];
    box.append(h("div", { class: "channel" + (flat ? " flat" : ""), title: `channel ${k}` + (flat ? `: ${flat}` : ""), "data-channel": k,
      onclick: e => pickChannel(layer, values, k, e.currentTarget) }, c, h("span", {}, k)));
  }
  return box;
}

function bars(layer, values) {
  const c = h("canvas", { class: "vector", height: 46 });
  requestAnimationFrame(() => {
    const w = c.clientWidth || 600; c.width = w;
    const ctx = c.getContext("2d"), n = layer.channels, bw = w / n, m = Math.max(Math.abs(layer.lo), Math.abs(layer.hi)) || 1;
    const zero = layer.lo < 0 ? 23 : 44;
    for (let i = 0; i < n; i++) {
      const v = values[i], hgt = (v / m) * (layer.lo < 0 ? 22 : 42);
      ctx.fillStyle = v >= 0 ? "#1f5fa8" : "#c0392b";
      ctx.fillRect(i * bw, zero - Math.max(hgt, 0), Math.max(1, bw - (bw > 3 ? 1 : 0)), Math.abs(hgt) || 0.5);
    }
  });
  c.title = layer.explainable ? "click a bar: that unit's arithmetic" : "";
  c.addEventListener("click", e => {
    if (!layer.explainable) return;
    const r = c.getBoundingClientRect(), k = Math.floor((e.clientX - r.left) / r.width * layer.channels);
    showMath(layer, [k], c.parentElement);
  });
  return c;
}

function showLayers() {
  const box = $("#layers");
  box.replaceChildren(h("p", { class: "hint" }, "Each layer's output for this image, in the order the model runs them; one colour scale per layer " +
    "(blue–red around zero when values have both signs). Click a channel for its kernel and the arithmetic of one pixel."));
  for (const layer of S.data.layers) {
    const title = h("div", { class: "title" }, h("b", {}, layer.name), h("span", { class: `kind ${layer.kind}` }, layer.kind),
      h("span", { class: "hint" }, `${layer.type} · ${layer.output_shape} · ${fmt.int(layer.params)} params`),
      layer.layout === "maps" && layer.total > layer.channels ? h("span", { class: "hint" }, `first ${layer.channels} of ${layer.total} channels`) : null,
      layer.layout === "vector" ? h("span", { class: "hint" }, `range ${fmt.g(layer.lo)} … ${fmt.g(layer.hi)}`) : null);
    const el = h("div", { class: "layer", id: `layer-${layer.name}`, "data-layer": layer.name }, title);
    if (layer.note) el.append(h("p", { class: "note" }, layer.note));
    if (layer === S.data.layers[S.data.layers.length - 1] && layer.layout === "vector") {
      el.append(h("p", { class: "hint" }, "The logits: the softmax turns them into the probabilities on the left (click a bar for its sum)."));
    }
    if (layer.layout === "maps") el.append(tiles(layer, f32(layer.data)));
    else if (layer.layout === "vector") el.append(bars(layer, f32(layer.data)));
    box.append(el);
  }
  const anchor = decodeURIComponent(location.hash.slice(1));
  if (anchor) document.getElementById(anchor)?.scrollIntoView();
}

function pickChannel(layer, values, k, tile) {
  $$(".channel.on").forEach(t => t.classList.remove("on"));
  tile.classList.add("on");
  const wrap = tile.closest(".layer");
  const big = drawMap(h("canvas", { class: "pixel", title: "click a pixel: its arithmetic" }), values, k * layer.h * layer.w, layer.h, layer.w,
    layer.lo, layer.hi, Math.max(1, Math.floor(196 / Math.max(layer.h, layer.w))));
  const mark = h("div", { style: { position: "absolute", border: "2px solid #e53", pointerEvents: "none", display: "none" } });
  const holder = h("div", { style: { position: "relative", display: "inline-block", lineHeight: 0 } }, big, mark);
  big.addEventListener("click", e => {
    const r = big.getBoundingClientRect();
    const row = Math.floor((e.clientY - r.top) / r.height * layer.h), col = Math.floor((e.clientX - r.left) / r.width * layer.w);
    showMath(layer, [k, row, col], wrap, { holder, mark });
  });
  showMath(layer, [k], wrap, { holder, mark, note: layer.notes[k] });
}

async function showMath(layer, pos, wrap, view = {}) {
  let box = $(".detail", wrap);
  if (!box) { box = h("div", { class: "detail" }); wrap.append(box); }
  const head = h("div", { class: "row" }, view.holder || null, h("div", { id: "math", style: { flex: "1" } }, h("p", { class: "loading" }, "computing…")));
  box.replaceChildren(h("h3", {}, `${layer.name}, ${layer.layout === "maps" ? "channel" : "unit"} ${pos[0]}`),
    ...(view.note ? [h("p", { class: "note" }, `This channel is ${view.note} for this image: nothing to draw.`)] : []), head);
  if (!layer.explainable) return $("#math", box).replaceChildren(h("p", { class: "hint" }, `No arithmetic is shown for ${layer.type} layers.`));
  const [c, r, col] = pos;
  const q = new URLSearchParams({ image: S.key, layer: layer.name, channel: c });
  if (r !== undefined) { q.set("row", r); q.set("col", col); }
  try {
    const m = await api(`/api/runs/${RUN}/arithmetic?${q}`);
    $("#math", box).replaceChildren(renderMath(m));
    if (view.mark && m.row !== undefined) {
      const s = view.holder.firstChild.clientWidth / layer.w;
      Object.assign(view.mark.style, { display: "block", left: m.col * s - 2 + "px", top: m.row * s - 2 + "px", width: s + "px", height: s + "px" });
    }
  } catch (err) { fail($("#math", box), err); }
}

// --------------------------------------------------------------------------------------- attribution

function attribution() {
  const d = S.data, box = $("#attribution");
  const method = h("select", { id: "attr-method", "aria-label": "method" }, [["gradcam", "Grad-CAM"], ["saliency", "Saliency"],
    ["integrated-gradients", "Integrated gradients"], ["occlusion", "Occlusion"]].map(([v, t]) => h("option", { value: v }, t)));
  const target = h("select", { id: "attr-target", "aria-label": "class" }, d.classes.map((c, i) => h("option", { value: i, selected: i === S.target }, c)));
  const convs = d.layers.filter(l => l.kind === "conv" && l.layout === "maps");
  const layer = h("select", { id: "attr-layer", "aria-label": "layer" }, h("option", { value: "" }, "last conv layer"), convs.map(l => h("option", { value: l.name }, l.name)));
  const out = h("div", { id: "attr-out" });
  const go = h("button", { id: "attr-go", onclick: async () => {
    out.replaceChildren(h("p", { class: "loading" }, "computing (Captum)…"));
    const q = new URLSearchParams({ image: S.key, method: method.value, target: target.value });
    if (method.value === "gradcam" && layer.value) q.set("layer", layer.value);
    try {
      const r = await api(`/api/runs/${RUN}/attribution?${q}`);
      const img = S.data.image, canvas = h("canvas", { class: "pixel", id: "attr-canvas" });
      const note = r.map.degenerate;
      if (note) out.replaceChildren(h("p", { class: "note", id: "attr-note" }, `${method.selectedOptions[0].text} for ${d.classes[r.target]} is ${note}: nothing to draw. ` +
        "(Grad-CAM keeps only positive evidence; try another class or layer.)"));
      else {
        drawOverlay(canvas, b64bytes(img.data), img.shape, r.map, Math.max(1, Math.floor(224 / img.shape[1])));
        out.replaceChildren(h("div", { class: "heat" }, canvas, h("div", { class: "hint" },
          `${method.selectedOptions[0].text} for class ${d.classes[r.target]}`, h("br"), `range ${fmt.g(r.map.lo)} … ${fmt.g(r.map.hi)}`, h("br"),
          r.cached ? "from the run's cache" : "computed now, cached")));
      }
      out.append(cmdLine(r.command));
    } catch (err) { fail(out, err); }
  } }, "Show");
  method.addEventListener("change", () => { layer.hidden = method.value !== "gradcam"; });
  box.replaceChildren(panel("Which pixels matter", null, h("div", { class: "toolbar" }, method, target, layer, go), out));
}

function page() {
  APP.replaceChildren(h("div", { class: "explorer" },
    h("div", { class: "side" }, chooser(), h("div", { id: "prediction" }), h("div", { id: "attribution" })),
    h("div", {}, h("section", { class: "panel" }, h("div", { class: "head" }, h("h2", {}, "Layers"), h("span", { id: "layers-cmd" })),
      h("div", { id: "layers" }, h("p", { class: "hint" }, "Pick an image on the left."))))));
  const key = new URLSearchParams(location.search).get("image") || "t-0";
  select(key);
}

page();
