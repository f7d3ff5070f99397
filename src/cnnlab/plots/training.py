"""Figures about training itself: variants side by side (``cnnlab compare``) and the learning-rate range test
(``cnnlab lr-find``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnlab.plots.common import finish_figure, new_figure


def plot_variants(series: Sequence[tuple[str, bool, Sequence[dict[str, Any]]]], title: str = "Compare") -> Figure:
    """Validation accuracy (left) and training loss (right) per epoch, one line per variant.

    Args:
        series: (variant name, whether it failed, its per-epoch metrics as in metrics.jsonl) per variant.
        title: the figure's title; the count of variants (and of failed ones) is added.
    """
    fig = new_figure(12, 4.4)
    drawn = [s for s in series if s[2]]
    epochs = sorted({h["epoch"] for _, _, history in drawn for h in history})
    for i, (key, label) in enumerate((("val_acc", "validation accuracy"), ("train_loss", "training loss"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, failed, history in drawn:
            pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", markersize=4, label=f"{name} (failed)" if failed else name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if epochs and len(epochs) <= 20:
            ax.set_xticks(epochs)
        if not drawn:
            ax.text(0.5, 0.5, "no variant finished an epoch", ha="center", va="center", transform=ax.transAxes)
        elif i == 0:
            ax.legend(fontsize=8, loc="best")
    failed = sum(bool(f) for _, f, _ in series)
    finish_figure(fig, f"{title}: {len(series)} variants" + (f", {failed} failed" if failed else ""), fontsize=12)
    return fig


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: float | None,
                 title: str = "Learning-rate range test") -> Figure:
    """fastai's ``lr_find`` plot: loss against learning rate (log axis), the suggested rate marked.

    Args:
        lrs: the rate of each step (growing exponentially).
        losses: each step's training loss.
        smoothed: the same, smoothed (what the suggestion was read from).
        suggestion: the suggested rate, marked with a red dot and a label; None draws no mark.
        title: the figure's title.
    """
    fig = new_figure(7, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    lrs_a, smooth_a = np.asarray(lrs, float), np.asarray(smoothed, float)
    ax.plot(lrs_a, np.asarray(losses, float), color="0.75", linewidth=1, label="loss per step")
    ax.plot(lrs_a, smooth_a, color="C0", linewidth=2, label="smoothed")
    if suggestion is not None:
        k = int(np.argmin(np.abs(np.log(lrs_a) - np.log(suggestion))))
        ax.plot([lrs_a[k]], [smooth_a[k]], "o", color="red", markersize=9, zorder=3,
                label=f"suggested lr {suggestion:.2g}")
        ax.axvline(lrs_a[k], color="red", linewidth=0.8, linestyle="--")
    finite = smooth_a[np.isfinite(smooth_a)]
    raw = np.asarray(losses, float)
    if finite.size:  # the diverging tail would squash the useful part of the curve
        low = float(min(finite.min(), raw[np.isfinite(raw)].min(initial=np.inf)))
        high = float(finite[: max(1, finite.size // 10)].max())
        ax.set_ylim(low - 0.05 * abs(low), max(high, low) + 0.25 * (max(high, low) - low + 1e-3))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9, loc="best")
    finish_figure(fig, title, fontsize=12)
    return fig
