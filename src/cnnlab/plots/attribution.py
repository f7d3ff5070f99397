"""Figures for heat maps and activation maximisation (no pyplot; arrays are computed elsewhere).

Images given here are in display space: uint8 0..255 or floats in [0, 1], (N, C, H, W) — pass
``normalizer.denormalize(x)`` or the original uint8 batch, not the normalised model input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from cnnlab.inspect.maximize import Maximized
from cnnlab.plots.common import finish_figure, image_grid, new_figure, overlay, to_display, value_range

ArrayLike = np.ndarray | torch.Tensor


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def stretch(image: ArrayLike, low: float = 1.0, high: float = 99.0, min_span: float = 0.2) -> np.ndarray:
    """Contrast stretch of one [0, 1] image: its ``low``–``high`` percentile range maps to [0, 1].

    Maximised images often sit close to mid-grey; stretching makes their pattern visible (one range for
    all channels, so colours keep their balance). The range is widened to at least ``min_span`` (at
    most 5× gain by default) inside [0, 1], so a flat or saturated image keeps its true brightness
    (all-white stays white) instead of having invisible noise blown up.
    """
    img = _np(image).astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(img, [low, high]))
    if hi - lo < min_span:
        mid = min(max((lo + hi) / 2, min_span / 2), 1 - min_span / 2)
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def plot_overlays(
    images: ArrayLike,
    heats: ArrayLike | Mapping[str, ArrayLike],
    titles: Sequence[str] | None = None,
    method: str = "heat",
    *,
    positive_only: bool = True,
    alpha: float = 0.5,
    panel: float = 1.6,
    suptitle: str | None = None,
) -> Figure:
    """One row per image: the image, then its heat map(s) blended over it, one column per method.

    Args:
        images: (N, C, H, W) display images (uint8 or [0, 1] floats).
        heats: (N, H, W) maps of one method, or ``{method name: (N, H, W)}`` for several columns
            (e.g. occlusion, saliency, integrated gradients, Grad-CAM).
        titles: one title per image row (e.g. "cat 0.97"), shown over the image column.
        method: column title when ``heats`` is a single array.
        positive_only: clip negative values (evidence against the class) to 0 before the per-panel
            min–max scaling, so colour only marks supporting evidence.
        alpha: heat-map opacity.
        panel: inches per panel side.
        suptitle: title over the figure.

    Returns:
        Figure with N × (1 + methods) axes.
    """
    maps = {k: _np(v) for k, v in heats.items()} if isinstance(heats, Mapping) else {method: _np(heats)}
    imgs = _np(images)
    n, cols = len(imgs), 1 + len(maps)
    for name, m in maps.items():
        if m.shape != (n, *imgs.shape[2:]):
            raise ValueError(f"heat map {name!r} has shape {m.shape}; expected {(n, *imgs.shape[2:])}")
    fig = new_figure(cols * panel, n * (panel + 0.3) + (0.4 if suptitle else 0.0))
    for i in range(n):
        ax = fig.add_subplot(n, cols, i * cols + 1)
        arr, cmap = to_display(imgs[i])
        vmin, vmax = value_range(arr)
        ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=8)
        elif i == 0:
            ax.set_title("image", fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=2):
            ax = fig.add_subplot(n, cols, i * cols + j)
            overlay(ax, imgs[i], np.clip(m[i], 0, None) if positive_only else m[i], alpha=alpha)
            if i == 0:
                ax.set_title(name, fontsize=8, fontweight="bold")
    finish_figure(fig, suptitle, fontsize=12)  # matplotlib's default suptitle size
    return fig


def _filter_panels(result: Maximized | ArrayLike) -> list[tuple[np.ndarray, str, bool]]:
    """(image, title, silent) per filter; silent = the activation stayed exactly 0 (a dead ReLU)."""
    if isinstance(result, Maximized):
        return [(img, f"#{k} silent" if s == 0 else f"#{k}  {s:.2g}", s == 0)
                for img, k, s in zip(_np(result.images), result.indices, result.scores.tolist(), strict=True)]
    return [(img, f"#{k}", False) for k, img in enumerate(_np(result))]


def plot_maximized(
    per_layer: Mapping[str, Maximized | ArrayLike],
    *,
    contrast: bool = True,
    panel: float = 1.1,
    suptitle: str | None = "Activation maximisation: filter # and mean activation reached",
) -> Figure:
    """Maximised filter images: one row per layer, one column per filter.

    Args:
        per_layer: layer name → ``Maximized`` (titles show filter index and reached mean activation;
            a filter stuck at 0 is titled "silent" and shown unstretched) or an (F, C, H, W) [0, 1]
            array (titles show positions).
        contrast: stretch each image's 1–99 percentile range to full contrast.
        panel: inches per panel side.
        suptitle: title over the figure (None for none).

    Returns:
        Figure with one axis per image (rows of different lengths leave blank cells).
    """
    rows = [(name, _filter_panels(r)) for name, r in per_layer.items()]
    cols = max((len(panels) for _, panels in rows), default=1)
    label_w = 0.25 + 0.07 * max((len(name) for name, _ in rows), default=0)  # room for the row labels
    fig = new_figure(label_w + cols * panel, len(rows) * (panel + 0.25) + (0.45 if suptitle else 0.0))
    for r, (name, panels) in enumerate(rows):
        for c, (img, label, silent) in enumerate(panels):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            # a silent filter's image is leftover start noise: stretching it would invent a pattern
            arr, cmap = to_display(stretch(img) if contrast and not silent else img)
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7, color="gray" if silent else "black")
            if c == 0:
                ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    finish_figure(fig, suptitle, fontsize=11)
    return fig


def plot_class_maximized(
    images: Maximized | ArrayLike,
    class_names: Sequence[str],
    *,
    contrast: bool = True,
    cols: int | None = None,
    panel: float = 1.6,
    suptitle: str | None = "Class maximisation: the input each class logit likes most",
) -> Figure:
    """Maximised class images in a grid, titled with the class name (and the reached logit).

    Args:
        images: a ``Maximized`` from ``maximize_classes`` (then ``class_names`` is the model's full
            class list, indexed by its class indices) or a (K, C, H, W) [0, 1] array with one name per image.
        class_names: see ``images``.
        contrast: stretch each image's 1–99 percentile range to full contrast.
        cols: grid columns (default near-square).
        panel: inches per panel side.
        suptitle: title over the figure (None for none).

    Returns:
        Figure with one axis per class image.
    """
    if isinstance(images, Maximized):
        imgs = _np(images.images)
        titles = [f"{class_names[k]}  logit {s:.3g}" for k, s in zip(images.indices, images.scores.tolist(), strict=True)]
    else:
        imgs = _np(images)
        titles = list(class_names)
        if len(titles) != len(imgs):
            raise ValueError(f"{len(titles)} class names for {len(imgs)} images")
    # uint8, because image_grid pins the display range only for uint8 (floats are auto-scaled, which
    # would turn a flat all-white image black)
    shown = [np.round(255 * (stretch(im) if contrast else np.clip(im, 0, 1))).astype(np.uint8) for im in imgs]
    return image_grid(shown, titles, cols=cols, panel=panel, suptitle=suptitle)
