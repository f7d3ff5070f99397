"""Shared plotting helpers: figures without pyplot, image grids, heat-map overlays, saving.

Every view computes arrays elsewhere; these functions only draw. Figures are built with
``matplotlib.figure.Figure`` (Agg canvas), so nothing needs a display and no global pyplot state leaks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

WRONG = "#c0392b"  # title colour of a wrong prediction
RIGHT = "#1e6b32"


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure of ``width`` × ``height`` inches with an Agg canvas attached."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def grid_shape(n: int, max_cols: int = 10) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` panels (64 → 8×8, 32 → 4×8, 10 → 3×4... ≤ max_cols)."""
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    if n > cols * cols and cols < max_cols:
        cols += 1
    return math.ceil(n / cols), cols


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
    rows, c = (math.ceil(n / cols), cols) if cols else grid_shape(n)
    title_h = 0.35 if titles else 0.0
    fig = new_figure(c * panel, rows * (panel + title_h) + (0.5 if suptitle else 0))
    for i, img in enumerate(images):
        ax = fig.add_subplot(rows, c, i + 1)
        arr, default_cmap = to_display(img)
        vmin, vmax = (0, 255) if arr.dtype == np.uint8 else (None, None)
        ax.imshow(arr, cmap=cmap or default_cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(titles[i], fontsize=8, color=(colors[i] if colors else "black"))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def overlay(ax, image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet") -> None:
    """Draws ``image`` with ``heat`` (H, W, any range; normalised to [0, 1] here) blended on top."""
    arr, gray = to_display(image)
    ax.imshow(arr, cmap=gray)
    h = np.asarray(heat, dtype=np.float32)
    span = float(h.max() - h.min())
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
    ax.imshow(h, cmap=cmap, alpha=alpha, extent=(-0.5, arr.shape[1] - 0.5, arr.shape[0] - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Writes ``fig`` as PNG (creating parent folders) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
