"""Shared plotting helpers: figures without pyplot, image grids, heat-map overlays, saving.

Every view computes arrays elsewhere; these functions only draw. Figures are built with
``matplotlib.figure.Figure`` (Agg canvas), so nothing needs a display and no global pyplot state leaks.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.io import atomic_path

WRONG = "#c0392b"  # title colour of a wrong prediction
RIGHT = "#1e6b32"


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure of ``width`` × ``height`` inches with an Agg canvas attached."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def grid_shape(n: int, max_cols: int = 16) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels, preferring full rows: 64 → 8×8, 32 → 4×8, 10 → 2×5, 7 → 3×3."""
    n = max(n, 1)
    root = math.sqrt(n)
    for cols in range(math.ceil(root), min(max_cols, n) + 1):
        if n % cols == 0 and cols <= 2 * root:
            return n // cols, cols
    cols = max(1, min(max_cols, math.ceil(root)))
    return math.ceil(n / cols), cols


def finish_figure(fig: Figure, title: str | None, fontsize: float = 10, **pads: float) -> None:
    """Suptitle plus tight layout below it (``tight_layout`` alone lets a suptitle overlap panel titles)."""
    if not title:
        fig.tight_layout(**pads)
        return
    fig.suptitle(title, fontsize=fontsize, y=1 - 0.08 / fig.get_figheight(), va="top")
    band = (fontsize / 72 + 0.02) / fig.get_figheight()  # title height + margin, as a figure fraction
    fig.tight_layout(rect=(0, 0, 1, 1 - band), **pads)


def value_range(arr: np.ndarray) -> tuple[float, float]:
    """Display range of an image array: 0..255 for uint8, 0..1 for floats (never auto-stretched)."""
    return (0, 255) if arr.dtype == np.uint8 else (0.0, 1.0)


def to_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (H, W) array → (H, W[, 3]) for imshow, and the colour map it needs (gray for 1 channel)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    return img, ("gray" if img.ndim == 2 else None)


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    *,
    colors: Sequence[str] | None = None,
    cols: int | None = None,
    panel: float = 1.6,
    suptitle: str | None = None,
    cmap: str | None = None,
) -> Figure:
    """Images in a grid with optional per-panel titles and title colours (e.g. red for wrong predictions).

    Args:
        images: (C, H, W) or (H, W) arrays; uint8 0..255 or floats in [0, 1].
        titles: one title per image.
        colors: one title colour per image.
        cols: columns (default: near-square, at most 10).
        panel: inches per panel side.
        suptitle: title over the grid.
        cmap: colour map for single-channel images (default gray).
    """
    n = len(images)
    rows, c = (math.ceil(n / cols), cols) if cols else grid_shape(n, max_cols=10)
    title_h = 0.35 if titles else 0.0
    fig = new_figure(c * panel, rows * (panel + title_h) + (0.5 if suptitle else 0))
    for i, img in enumerate(images):
        ax = fig.add_subplot(rows, c, i + 1)
        arr, default_cmap = to_display(img)
        vmin, vmax = value_range(arr)
        ax.imshow(arr, cmap=cmap or default_cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=8, color=(colors[i] if colors else "black"))
    finish_figure(fig, suptitle, fontsize=12)
    return fig


def overlay(ax, image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet") -> None:
    """Draws ``image`` with ``heat`` (H, W, any range; normalised to [0, 1] here) blended on top."""
    arr, gray = to_display(image)
    vmin, vmax = value_range(arr)
    ax.imshow(arr, cmap=gray, vmin=vmin, vmax=vmax)
    h = np.asarray(heat, dtype=np.float32)
    span = float(h.max() - h.min())
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
    ax.imshow(h, cmap=cmap, alpha=alpha, extent=(-0.5, arr.shape[1] - 0.5, arr.shape[0] - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Writes ``fig`` as PNG (creating parent folders) and returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:  # a viewer never sees half a PNG; the umask's permissions
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def figure_data_uri(fig: Figure, dpi: int = 100) -> str:
    """``fig`` as a ``data:image/png;base64,...`` URI, rendered in memory."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
