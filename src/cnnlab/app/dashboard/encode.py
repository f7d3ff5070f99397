"""Arrays to what a browser draws: base64 float32/uint8 for canvases, PNG bytes for images, and the layer
payload of the explorer (channel grids on one shared scale, with degenerate channels named)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from cnnlab.inspect.activations import degenerate
from cnnlab.models.summary import LayerRow

MAX_CHANNELS = 64  # channels per layer sent to the explorer (the rest are counted, not drawn)
MAX_VECTOR = 4096  # values of a vector layer sent


def b64(arr: np.ndarray | torch.Tensor, dtype: str = "float32") -> str:
    """Little-endian raw bytes of ``arr`` as ``dtype``, base64: JavaScript reads them into a typed array."""
    a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def png(image_u8: np.ndarray | torch.Tensor, scale: int = 1) -> bytes:
    """A uint8 image (C, H, W) with C = 1 or 3 as PNG bytes, optionally enlarged by pixel repetition."""
    a = image_u8.cpu().numpy() if isinstance(image_u8, torch.Tensor) else np.asarray(image_u8)
    a = np.ascontiguousarray(a.transpose(1, 2, 0))
    if scale > 1:
        a = a.repeat(scale, axis=0).repeat(scale, axis=1)
    im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a, "L" if a.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def unit_png(image01: np.ndarray | torch.Tensor, scale: int = 4) -> bytes:
    """A float image in [0, 1] (C, H, W), e.g. from activation maximisation, as PNG."""
    a = image01.cpu().numpy() if isinstance(image01, torch.Tensor) else np.asarray(image01)
    return png(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8), scale)


def image_payload(image_u8: torch.Tensor) -> dict[str, Any]:
    """The input image as the model sees it before normalisation: shape and raw uint8 pixels."""
    return {"shape": list(image_u8.shape), "data": b64(image_u8, "uint8")}


def layer_payload(row: LayerRow, out: torch.Tensor, *, explainable: bool) -> dict[str, Any]:
    """One layer's output for one image, ready for the explorer.

    Feature maps (C, H, W) go as their first :data:`MAX_CHANNELS` channels, vectors as their values, on
    one scale per layer (``lo``..``hi``), so channels compare with each other; ``notes`` names channels
    that are not worth a picture (constant, 1×1), and ``note`` says so for the whole layer.
    """
    values = out.detach().float().cpu()
    d: dict[str, Any] = {"name": row.name, "type": row.type, "kind": row.kind, "shape": list(values.shape),
                         "output_shape": row.output_shape, "params": row.params, "explainable": explainable}
    if values.ndim == 3 and values.shape[1] * values.shape[2] > 1:
        c = values.shape[0]
        shown = values[:MAX_CHANNELS]
        notes = {k: why for k in range(shown.shape[0]) if (why := degenerate(shown[k]))}
        d.update(layout="maps", channels=int(shown.shape[0]), total=int(c), h=int(values.shape[1]),
                 w=int(values.shape[2]), notes=notes, data=b64(shown))
        if len(notes) == shown.shape[0]:
            d["note"] = "every channel shown is constant for this image: nothing to draw"
    else:
        flat = values.reshape(-1)
        shown = flat[:MAX_VECTOR]
        d.update(layout="vector", channels=int(shown.numel()), total=int(flat.numel()), data=b64(shown))
        if values.ndim == 3:
            d["note"] = "1×1 maps: each channel is a single number, shown as a bar instead of a stretched square"
        if degenerate(shown.view(1, -1)) and shown.numel() > 1:
            d["note"] = f"{degenerate(shown.view(1, -1))} for this image"
    d["lo"], d["hi"] = (float(shown.min()), float(shown.max())) if shown.numel() else (0.0, 0.0)
    return d


def map_payload(heat: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """A 2-D heat map (H, W): values, range, and why it is degenerate (then the page says so instead)."""
    a = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float32)
    return {"h": int(a.shape[0]), "w": int(a.shape[1]), "lo": float(a.min()), "hi": float(a.max()),
            "degenerate": degenerate(a), "data": b64(a)}
