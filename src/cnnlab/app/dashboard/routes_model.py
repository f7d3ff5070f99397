"""Inside a run's model: uploads, the explorer (activations, pixel arithmetic, softmax, attribution), units
(filters, top images, activation maximisation) and the architecture. Every computation is a function of
:mod:`cnnlab.inspect` or :mod:`cnnlab.serve`; these routes only pick the run, the image and the layer."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cnnlab.app.dashboard.encode import b64, image_payload, layer_payload, map_payload, unit_png
from cnnlab.app.dashboard.routes_runs import compute, dash
from cnnlab.app.dashboard.security import form_file, read_capped
from cnnlab.app.dashboard.store import Dashboard, NotFound, RunContext
from cnnlab.data.decode import BadImage, decode_array, pixel_limit
from cnnlab.errors import CnnlabError, one_of
from cnnlab.inspect import attribution as A
from cnnlab.inspect.activations import capture
from cnnlab.inspect.architecture import architecture_rows
from cnnlab.inspect.arithmetic import explain, explainable, softmax_math
from cnnlab.inspect.maximize import maximize_filters
from cnnlab.inspect.units import top_images, unit_scores
from cnnlab.inspect.weights import conv_filters
from cnnlab.models.summary import eval_mode

router = APIRouter()
METHODS = ("gradcam", "saliency", "integrated-gradients", "occlusion")
SHOW_VIEW = {"gradcam": "gradcam", "saliency": "saliency", "integrated-gradients": "saliency",
             "occlusion": "occlusion"}
SLOW = 120.0  # seconds a request waits for activation maximisation / a first pass over the test set


def _rows(ctx: RunContext) -> list:
    if "rows" not in ctx.memo:  # torchinfo's trace: once per loaded run
        ctx.memo["rows"] = architecture_rows(ctx.model, ctx.input_shape)
    return ctx.memo["rows"]


def unit_count(ctx: RunContext, layer: str) -> int | None:
    """How many units (output channels) ``layer`` has; None when the run has no such layer with feature maps."""
    row = next((r for r in _rows(ctx) if r.name == layer and r.shape is not None and len(r.shape) == 3), None)
    return None if row is None else int(row.shape[0])


def _show(d: Dashboard, ctx: RunContext, view: str, key: str, extra: str = "") -> str:
    images = f" --images {key[2:]}" if key.startswith("t-") else ""
    note = "" if images else "   # shows test images; yours is the uploaded one"
    return f"cnnlab show {d.path_text(ctx.row)} {view}{images}{extra}{note}"


# ------------------------------------------------------------------------------------------- images


@router.post("/api/runs/{rid}/upload")
async def upload(request: Request, rid: str) -> dict:
    """An image file (PNG, JPEG, BMP, GIF, WebP) as the raw body or as the ``file`` field of a multipart form,
    decoded by cnnlab's safe decoder to the run's input: the key it returns names it in the other calls."""
    d = dash(request)
    row = d.row(rid)
    data = form_file(await read_capped(request, d.upload_limit), request.headers.get("content-type", ""))
    if not data:
        raise CnnlabError("the upload is empty; send an image file (PNG, JPEG, BMP, GIF or WebP)")

    def decode(ctx: RunContext, blob: bytes) -> tuple[str, list[int]]:
        c, h, w = ctx.input_shape
        # the decoder reads a path (size checks, bomb guard, EXIF orientation): a private temporary file
        with tempfile.TemporaryDirectory(prefix="cnnlab-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(blob)
            try:
                arr = decode_array(path, (h, w), c == 1, ctx.predictor.resize, pixel_limit())
            except BadImage as exc:  # its reason, without decode_image's advice about files on disk
                raise CnnlabError(f"the upload cannot be used: {exc}; send another image file (PNG, JPEG, BMP, "
                                  "GIF or WebP)") from None
        pixels = torch.from_numpy(arr.transpose(2, 0, 1).copy())  # (C, H, W) as decode_image gives it
        return d.add_upload(ctx.input_shape, pixels), list(pixels.shape)

    key, shape = await compute(request, row, "upload", decode, data)
    return {"key": key, "shape": shape}


# ------------------------------------------------------------------------------------------ explorer


def _explore(ctx: RunContext, d: Dashboard, key: str) -> dict[str, Any]:
    image, label = d.image(ctx, key)
    rows = [r for r in _rows(ctx)[1:] if r.shape is not None]
    shown = [r for r in rows if r.kind not in ("reshape", "dropout")]
    outs = capture(ctx.model, ctx.view.normalizer(image[None]), [r.name for r in shown])
    layers = []
    for r in rows:
        if r.kind in ("reshape", "dropout"):
            layers.append({"name": r.name, "type": r.type, "kind": r.kind, "shape": list(r.shape), "params": r.params,
                           "output_shape": r.output_shape, "layout": "same",
                           "note": "the previous layer's values, reshaped" if r.kind == "reshape" else
                                   "the previous layer's values (dropout is off when predicting)"})
        else:
            layers.append(layer_payload(r, outs[r.name][0], explainable=explainable(ctx.model, r.name)))
    probs = ctx.predictor.predict(image.numpy())[0]
    return {"image": {**image_payload(image), "key": key, "label": label}, "classes": list(ctx.classes),
            "probs": [float(p) for p in probs], "predicted": int(np.argmax(probs)), "layers": layers,
            "command": _show(d, ctx, "feature-maps", key),
            "predict_command": (_show(d, ctx, "predictions", key) if key.startswith("t-") else
                                f"cnnlab predict {d.path_text(ctx.row)} your-image.png --top-k 3")}


@router.get("/api/runs/{rid}/explore")
async def explore(request: Request, rid: str, image: str) -> dict:
    d = dash(request)
    return await compute(request, d.row(rid), "explore", _explore, d, image)


def _predict(ctx: RunContext, d: Dashboard, key: str) -> dict[str, Any]:
    image, label = d.image(ctx, key)
    probs = ctx.predictor.predict(image.numpy())[0]
    return {"classes": list(ctx.classes), "probs": [float(p) for p in probs], "predicted": int(np.argmax(probs)),
            "label": label}


@router.get("/api/runs/{rid}/predict")
async def predict(request: Request, rid: str, image: str) -> dict:
    d = dash(request)
    return await compute(request, d.row(rid), "predict", _predict, d, image)


def _arithmetic(ctx: RunContext, d: Dashboard, key: str, layer: str, position: tuple[int, ...]) -> dict[str, Any]:
    image, _ = d.image(ctx, key)
    x = ctx.view.normalizer(image[None])
    if layer == "softmax":
        with eval_mode(ctx.model), torch.no_grad():
            logits = ctx.model(x)[0].double().numpy()
        return {**softmax_math(logits).to_dict(), "classes": list(ctx.classes)}
    return {**explain(ctx.model, x, layer, position or None).to_dict(), "layer": layer}


@router.get("/api/runs/{rid}/arithmetic")
async def arithmetic(request: Request, rid: str, image: str, layer: str, channel: int | None = None,
                     row: int | None = None, col: int | None = None) -> dict:
    """One output value of ``layer`` recomputed by hand (``layer=softmax``: the probabilities from the logits)."""
    d = dash(request)
    position = tuple(v for v in (channel, row, col) if v is not None)
    if (row is None) != (col is None) or (row is not None and channel is None):
        raise CnnlabError("give `channel`, or `channel`, `row` and `col`")
    return await compute(request, d.row(rid), "arith", _arithmetic, d, image, layer, position)


def _attribution(ctx: RunContext, d: Dashboard, key: str, method: str, target: int | None,
                 layer: str | None, window: int | None) -> dict[str, Any]:
    image, label = d.image(ctx, key)
    x = ctx.view.normalizer(image[None])
    if target is None:
        target = int(np.argmax(ctx.predictor.predict(image.numpy())[0]))
    if not 0 <= target < len(ctx.classes):
        raise CnnlabError(f"`target` {target} is not a class; use 0..{len(ctx.classes) - 1}")
    pixels = hashlib.sha256(image.numpy().tobytes()).hexdigest()
    name = f"attr-{ctx.key('attribution', pixels, method, target, layer, window)}.npy"
    fns = {"gradcam": lambda: A.gradcam(ctx.model, x, target, layer=layer),
           "saliency": lambda: A.saliency(ctx.model, x, target),
           "integrated-gradients": lambda: A.integrated_gradients(ctx.model, x, target),
           "occlusion": lambda: A.occlusion(ctx.model, x, target, window=window)}
    hit = ctx.cache.get_array(name) is not None
    heat = ctx.cache.cached(name, lambda: fns[method]()[0].float().numpy())
    extra = f" --layers {layer}" if layer and method == "gradcam" else ""
    return {"method": method, "target": target, "label": label, "classes": list(ctx.classes), "cached": hit,
            "map": map_payload(heat), "command": _show(d, ctx, SHOW_VIEW[method], key, extra)}


@router.get("/api/runs/{rid}/attribution")
async def attribution(request: Request, rid: str, image: str, method: str = "gradcam", target: int | None = None,
                      layer: str | None = None, window: int | None = None) -> dict:
    """Grad-CAM, saliency, integrated gradients or occlusion (Captum) for one image and class, cached by
    (weights digest, image, method, arguments) in the run's dashboard cache. ``window``: occlusion's patch
    side in pixels (1..the image side; default about a seventh of the image)."""
    if method not in METHODS:
        raise one_of("method", method, METHODS)
    if window is not None and method != "occlusion":  # not silently ignored: another method has no patch
        raise CnnlabError(f"`window` is occlusion's patch size; {method} has none (use method=occlusion)")
    d = dash(request)  # a window that does not fit the image: occlusion's own one-line error, a 400
    return await compute(request, d.row(rid), "attr", _attribution, d, image, method, target, layer, window)


# ------------------------------------------------------------------------------------- units, layers


def _conv_layers(ctx: RunContext, d: Dashboard) -> dict[str, Any]:
    rows = [r for r in _rows(ctx) if r.kind == "conv" and r.shape is not None and len(r.shape) == 3]
    out = []
    for r in rows:
        try:
            w = conv_filters(ctx.model, r.name)
        except CnnlabError:  # a conv block, not an nn.Conv2d: no single kernel to show
            continue
        shown = w if w.shape[1] == 3 else w.mean(axis=1, keepdims=True)  # RGB kernels in colour, else the mean
        out.append({"name": r.name, "type": r.type, "shape": list(r.shape), "kernel": list(w.shape),
                    "filters": b64(shown), "filters_shape": list(shown.shape),
                    "how": "RGB" if w.shape[1] == 3 else ("mean over input channels" if w.shape[1] > 1 else "gray")})
    names = " ".join(r["name"] for r in out)
    return {"layers": out, "command": f"cnnlab show {d.path_text(ctx.row)} filters --layers {names}"}


@router.get("/api/runs/{rid}/layers")
async def layers(request: Request, rid: str) -> dict:
    d = dash(request)
    return await compute(request, d.row(rid), "layers", _conv_layers, d)


def _unit(ctx: RunContext, d: Dashboard, layer: str, unit: int, k: int) -> dict[str, Any]:
    scores = ctx.cache.cached(f"units-{ctx.key('units', layer)}.npy",
                              lambda: unit_scores(ctx.model, ctx.view.test.images, ctx.view.normalizer, layer))
    top = top_images(scores, unit, k)
    labels = ctx.view.test.labels
    out: dict[str, Any] = {"layer": layer, "unit": unit, "units": int(scores.shape[1]), "classes": list(ctx.classes),
                           "top": [{"index": i, "score": s, "label": int(labels[i])} for i, s in top]}
    module = dict(ctx.model.named_modules()).get(layer)
    if isinstance(module, torch.nn.Conv2d):
        w = conv_filters(ctx.model, layer)[unit]
        bias = float(module.bias.detach()[unit]) if module.bias is not None else 0.0
        out["kernel"] = {"shape": list(w.shape), "data": b64(w), "bias": bias}
    path = d.path_text(ctx.row)
    out["commands"] = {"filters": f"cnnlab show {path} filters --layers {layer}",
                       "maximize": f"cnnlab show {path} maximize --layers {layer}"}
    return out


@router.get("/api/runs/{rid}/layers/{layer}/units/{unit}")
async def unit_info(request: Request, rid: str, layer: str, unit: int, k: int = Query(9, ge=1, le=64)) -> dict:
    d = dash(request)
    if unit < 0:
        raise NotFound(f"no unit {unit}")
    return await compute(request, d.row(rid), "unit", _unit, d, layer, unit, k, timeout=SLOW)


def _maximize(ctx: RunContext, layer: str, unit: int, steps: int) -> bytes:
    name = f"max-{ctx.key('maximize', layer, unit, steps)}.png"
    data = ctx.cache.get_bytes(name)
    if data is None:
        m = maximize_filters(ctx.model, layer, [unit], input_shape=ctx.input_shape, normalizer=ctx.view.normalizer,
                             steps=steps)
        data = unit_png(m.images[0], scale=max(1, 112 // ctx.input_shape[1]))
        ctx.cache.put_bytes(name, data)
    return data


@router.get("/api/runs/{rid}/layers/{layer}/units/{unit}/maximize")
async def maximize(request: Request, rid: str, layer: str, unit: int, steps: int = Query(128, ge=8, le=512)) -> Response:
    data = await compute(request, dash(request).row(rid), "max", _maximize, layer, unit, steps, timeout=SLOW)
    return Response(data, media_type="image/png")


def _architecture(ctx: RunContext, d: Dashboard) -> dict[str, Any]:
    rows = _rows(ctx)
    convs = {name for name, m in ctx.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return {"rows": [{"name": r.name, "type": r.type, "output_shape": r.output_shape, "params": r.params,
                      "kind": r.kind, "shape": list(r.shape) if r.shape else None, "units": r.name in convs}
                     for r in rows],
            "total_params": sum(p.numel() for p in ctx.model.parameters()),
            "command": f"cnnlab show {d.path_text(ctx.row)} architecture"}


@router.get("/api/runs/{rid}/architecture")
async def architecture(request: Request, rid: str) -> dict:
    d = dash(request)
    return await compute(request, d.row(rid), "arch", _architecture, d)
