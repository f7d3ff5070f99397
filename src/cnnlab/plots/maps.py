"""Figures for the feature-map, filter, template, kernel and architecture views (drawing only).

Every function takes the arrays computed by ``activations``, ``weights``, ``kernels`` or ``architecture``
and returns a ``matplotlib.figure.Figure`` built without pyplot; save it with ``plots.save_figure``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from cnnlab.errors import CnnlabError
from cnnlab.inspect.architecture import Diagram
from cnnlab.inspect.kernels import EDGE_KERNEL, convolve, max_pool2x2, patch_numbers
from cnnlab.models.summary import LayerRow
from cnnlab.plots.common import finish_figure, grid_shape, new_figure, to_display

# Box colours of the architecture diagram, by LayerRow.kind.
KIND_COLORS = {
    "input": "#e8e8e8", "conv": "#cfe2f3", "pool": "#d9ead3", "dense": "#fce5cd", "norm": "#ead1dc",
    "activation": "#fff2cc", "dropout": "#eeeeee", "reshape": "#d0e0e3", "block": "#d9d2e9", "other": "#f3f3f3",
}


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_feature_grid(
    maps: Sequence[Sequence[np.ndarray]],
    layer_names: Sequence[str],
    *,
    row_labels: Sequence[str] | None = None,
    filter_index: int | None = None,
    cmap: str = "inferno",
) -> Figure:
    """The first tutorial's grid: one filter of several layers (columns) for several images (rows).

    Each panel has its own colour scale (bright = strong activation), as ``imshow`` does in the tutorial.

    Args:
        maps: ``maps[i][j]`` is image i's (H, W) map at layer j (from ``activations.feature_map_grid``).
        layer_names: one per column; titles show the name and the map size.
        row_labels: one per image, e.g. ``"#7 · Trouser"``; default ``image 0``, ``image 1``...
        filter_index: the channel shown, for the title.
        cmap: colour map.
    """
    rows, cols = len(maps), len(layer_names)
    if rows == 0 or cols == 0 or any(len(r) != cols for r in maps):
        raise CnnlabError(f"feature grid needs {cols} maps per image for {cols} layers, got {[len(r) for r in maps]}")
    labels = list(row_labels) if row_labels is not None else [f"image {i}" for i in range(rows)]
    panel = 1.9
    fig = new_figure(cols * panel + 0.5, rows * (panel + 0.15) + 1.0)
    for i in range(rows):
        for j in range(cols):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            arr = np.asarray(maps[i][j])
            ax.imshow(arr, cmap=cmap, interpolation="nearest")
            _bare(ax)
            if i == 0:
                ax.set_title(f"{layer_names[j]}\n{arr.shape[0]}×{arr.shape[1]}", fontsize=9)
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=9)
    finish_figure(fig, "Feature maps" + (f" of filter {filter_index}" if filter_index is not None else ""), 11)
    return fig


def plot_channel_maps(maps: np.ndarray, *, layer: str | None = None, cmap: str = "gray") -> Figure:
    """Every channel of one layer's output for one image, in a near-square grid (64 → 8×8, 32 → 4×8).

    Args:
        maps: (C, H, W) from ``activations.channel_maps``; each panel is scaled on its own.
        layer: layer name for the title.
        cmap: colour map.
    """
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise CnnlabError(f"channel maps must be (C, H, W), got shape {arr.shape}")
    n = arr.shape[0]
    rows, cols = grid_shape(n)
    panel = min(1.2, 13.0 / cols)  # inches; keeps wide layers (128+ channels) within ~14 in
    fig = new_figure(cols * panel, rows * (panel + 0.15) + 0.5)
    for c in range(n):
        ax = fig.add_subplot(rows, cols, c + 1)
        ax.imshow(arr[c], cmap=cmap, interpolation="nearest")
        _bare(ax)
        ax.set_title(str(c), fontsize=6, pad=1.5)
    name = f"{layer}: " if layer else ""
    finish_figure(fig, f"{name}{n} channels, {arr.shape[1]}×{arr.shape[2]} each", pad=0.3, h_pad=0.2, w_pad=0.2)
    return fig


def plot_filters(filters: np.ndarray, *, layer: str | None = None) -> Figure:
    """Conv kernels as a grid, one panel per output channel, on one shared colour scale.

    Kernels with 3 input channels (an RGB first layer) are shown in colour, min-max scaled over all
    kernels together. Otherwise each panel is the mean over the kernel's input channels, in gray with 0
    at mid-gray (light = positive weights, dark = negative), so strengths compare across panels.

    Args:
        filters: (out, in, kh, kw) from ``weights.conv_filters``.
        layer: layer name for the title.
    """
    w = np.asarray(filters, dtype=np.float32)
    if w.ndim != 4:
        raise CnnlabError(f"filters must be (out, in, kh, kw), got shape {w.shape}")
    out, cin, kh, kw = w.shape
    rows, cols = grid_shape(out)
    panel = min(0.9, 12.0 / cols)
    fig = new_figure(cols * panel, rows * (panel + 0.15) + 0.5)
    if cin == 3:
        lo, hi = float(w.min()), float(w.max())
        panels = [np.transpose((k - lo) / (hi - lo or 1.0), (1, 2, 0)) for k in w]  # (kh, kw, 3) in [0, 1]
        limits: dict = {}
        how = "RGB"
    else:
        panels = list(w.mean(axis=1))
        bound = float(np.abs(w.mean(axis=1)).max()) or 1.0
        limits = {"cmap": "gray", "vmin": -bound, "vmax": bound}
        how = "mean over input channels" if cin > 1 else "gray"
    for i, img in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img, interpolation="nearest", **limits)
        _bare(ax)
        ax.set_title(str(i), fontsize=6, pad=1.5)
    name = f"{layer}: " if layer else ""
    finish_figure(fig, f"{name}{out} filters of {kh}×{kw}×{cin} ({how})", pad=0.3, h_pad=0.2, w_pad=0.2)
    return fig


def plot_templates(templates: np.ndarray, class_names: Sequence[str] | None = None) -> Figure:
    """One panel per class of ``weights.dense_templates``: "What the network sees".

    Gray templates use a diverging map centred on 0 per panel: red pixels raise the class's score, blue
    ones lower it. RGB templates are min-max scaled per class.

    Args:
        templates: (classes, C, H, W).
        class_names: panel titles; default the class indices.
    """
    t = np.asarray(templates, dtype=np.float32)
    if t.ndim != 4:
        raise CnnlabError(f"templates must be (classes, C, H, W), got shape {t.shape}")
    n = t.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise CnnlabError(f"{len(names)} class names for {n} templates; give one name per class")
    rows, cols = grid_shape(n, max_cols=10)
    panel = 1.6
    fig = new_figure(cols * panel, rows * (panel + 0.3) + 0.6)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img, _ = to_display(t[i])
        if img.ndim == 3:
            span = float(img.max() - img.min()) or 1.0
            ax.imshow((img - img.min()) / span)
        else:
            bound = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-bound, vmax=bound)
        _bare(ax)
        ax.set_title(names[i], fontsize=9)
    finish_figure(fig, "What the network sees", 12)
    return fig


def _number_grid(ax: Axes, values: np.ndarray, x0: float, title: str, fmt: str = "{:g}") -> float:
    """Writes a small matrix as boxed cells starting at x0 (data units = cells); returns its right edge."""
    kh, kw = values.shape
    for r in range(kh):
        for c in range(kw):
            ax.add_patch(Rectangle((x0 + c, kh - 1 - r), 1, 1, facecolor="white", edgecolor="#555555", lw=0.8))
            ax.text(x0 + c + 0.5, kh - 0.5 - r, fmt.format(values[r, c]), ha="center", va="center", fontsize=9)
    ax.text(x0 + kw / 2, kh + 0.35, title, ha="center", va="bottom", fontsize=9, fontweight="bold")
    return x0 + kw


def plot_kernel_demo(
    image2d: np.ndarray,
    kernel: np.ndarray = EDGE_KERNEL,
    *,
    row: int | None = None,
    col: int | None = None,
) -> Figure:
    """The first tutorial's convolution demo: image, after the kernel, after 2×2 max-pooling, one patch's sums.

    The bottom row writes out one patch: pixels × kernel = products, their sum and the clipped output.

    Args:
        image2d: grayscale image (H, W), 0..255.
        kernel: (kh, kw) weights; default the edge kernel.
        row: output row of the annotated patch (its top row in the image); default where the output is
            largest (the strongest edge).
        col: output column of the annotated patch.
    """
    conv = convolve(image2d, kernel)
    pooled = max_pool2x2(conv)
    if row is None or col is None:
        row, col = (int(v) for v in np.unravel_index(int(np.argmax(conv)), conv.shape))
    numbers = patch_numbers(image2d, kernel, row, col)
    kh, kw = numbers.patch.shape
    img = np.asarray(image2d, dtype=np.float64).reshape(conv.shape[0] + kh - 1, conv.shape[1] + kw - 1)

    fig = new_figure(11, 7)
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 2])
    shown = [(img, f"original {img.shape[0]}×{img.shape[1]}"),
             (conv, f"after the kernel {conv.shape[0]}×{conv.shape[1]}"),
             (pooled, f"after 2×2 max-pool {pooled.shape[0]}×{pooled.shape[1]}")]
    for j, (arr, title) in enumerate(shown):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        _bare(ax)
        ax.set_title(title, fontsize=10)
        # Mark the annotated patch in the image and its output pixel (pooled: the 2×2 block holding it).
        if j == 0:
            box = (col - 0.5, row - 0.5, kw, kh)
        elif j == 1:
            box = (col - 0.5, row - 0.5, 1, 1)
        else:
            box = (col // 2 - 0.5, row // 2 - 0.5, 1, 1)
        size = max(arr.shape) / 60  # keep tiny boxes visible on big images
        ax.add_patch(Rectangle((box[0] - size, box[1] - size), box[2] + 2 * size, box[3] + 2 * size,
                               fill=False, edgecolor="#00d0ff", lw=1.5))

    ax = fig.add_subplot(grid[1, :])
    ax.set_axis_off()
    x = _number_grid(ax, numbers.patch, 0, f"pixels: rows {row}–{row + kh - 1}, cols {col}–{col + kw - 1}")
    ax.text(x + 0.75, kh / 2, "×", ha="center", va="center", fontsize=16)
    x = _number_grid(ax, np.asarray(kernel, dtype=np.float64), x + 1.5, "kernel")
    ax.text(x + 0.75, kh / 2, "=", ha="center", va="center", fontsize=16)
    x = _number_grid(ax, numbers.products + 0.0, x + 1.5, "products")  # + 0.0 turns -0 into 0
    ax.text(x + 0.5, kh / 2, f"sum = {numbers.total:g}\nclipped to 0..255 → {numbers.output:g}",
            ha="left", va="center", fontsize=11)
    ax.set_xlim(-0.2, x + 5.5)
    ax.set_ylim(-0.2, kh + 1.1)
    ax.set_aspect("equal")
    finish_figure(fig, f"A {kh}×{kw} convolution by hand", 12)
    return fig


def plot_architecture(diagram: Diagram, *, title: str | None = None) -> Figure:
    """Keras ``plot_model``'s picture: one box per layer, top to bottom, arrows in execution order.

    Boxes show ``name: Type`` and the Keras output shape with the parameter count, coloured by kind.
    Long models wrap into columns (see ``architecture.layout``), with an arrow from the bottom of one
    column to the top of the next.

    Args:
        diagram: from ``architecture.architecture_diagram``.
        title: shown above the boxes, e.g. the model's name.
    """
    longest = max(max(len(f"{b.row.name}: {b.row.type}"), len(_shape_line(b.row))) for b in diagram.boxes)
    # Units are inches (the axes fill the figure), so text sizes are known: ~0.075 in per 9-pt character.
    bw, bh, vgap, hgap = max(2.4, 0.075 * longest + 0.3), 0.62, 0.32, 0.9
    top = 0.75 if title else 0.3  # room for the title and for wrap arrows entering a column from above
    width = diagram.columns * bw + (diagram.columns - 1) * hgap + 0.4
    height = top + diagram.per_column * (bh + vgap) - vgap + (0.3 if diagram.columns > 1 else 0.1)
    fig = new_figure(width, height)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y grows downwards, like the diagram
    ax.set_axis_off()

    def corner(i: int) -> tuple[float, float]:
        b = diagram.boxes[i]
        return 0.2 + b.column * (bw + hgap), top + b.slot * (bh + vgap)

    for i, b in enumerate(diagram.boxes):
        x, y = corner(i)
        ax.add_patch(FancyBboxPatch((x, y), bw, bh, boxstyle="round,pad=0,rounding_size=0.08",
                                    facecolor=KIND_COLORS.get(b.row.kind, "#f3f3f3"), edgecolor="#444444", lw=0.8))
        ax.text(x + bw / 2, y + bh * 0.32, f"{b.row.name}: {b.row.type}", ha="center", va="center",
                fontsize=9, fontweight="bold")
        ax.text(x + bw / 2, y + bh * 0.72, _shape_line(b.row), ha="center", va="center", fontsize=8, color="#333333")
    arrow = {"arrowstyle": "-|>", "color": "#444444", "lw": 1.0, "shrinkA": 0, "shrinkB": 0}
    for a, b in diagram.edges:
        (xa, ya), (xb, yb) = corner(a), corner(b)
        if diagram.boxes[a].column == diagram.boxes[b].column:
            ax.annotate("", xy=(xa + bw / 2, yb), xytext=(xa + bw / 2, ya + bh), arrowprops=arrow)
            continue
        # Column wrap: down from the last box, across the gap, up to above the next column's first box.
        low, mid = ya + bh + vgap / 2, xa + bw + hgap / 2
        path_x = [xa + bw / 2, xa + bw / 2, mid, mid, xb + bw / 2]
        path_y = [ya + bh, low, low, yb - vgap / 2, yb - vgap / 2]
        ax.plot(path_x, path_y, color="#444444", lw=1.0)
        ax.annotate("", xy=(xb + bw / 2, yb), xytext=(xb + bw / 2, yb - vgap / 2), arrowprops=arrow)
    if title:
        ax.text(0.2, 0.3, f"{title}  ·  {diagram.total_params:,} parameters", fontsize=11, va="center")
    return fig


def _shape_line(row: LayerRow) -> str:
    params = f"{row.params:,} params" if row.params else "no params"
    return f"{row.output_shape}  ·  {params}" if row.kind != "input" else row.output_shape
