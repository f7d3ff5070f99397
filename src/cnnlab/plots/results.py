"""Figures of a run's results: learning curves, prediction grids, mistakes and their breakdown."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from cnnlab.plots.common import RIGHT, WRONG, finish_figure, image_grid, new_figure


def plot_curves(history: Sequence[dict], title: str | None = None) -> Figure:
    """Tutorial 2's two panels: loss and accuracy per epoch, training vs validation."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(10, 3.8)
    for i, (key, label) in enumerate((("loss", "Loss (cross-entropy)"), ("acc", "Accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [h[f"train_{key}"] for h in history], ".-", label=f"training {key}", color="#1f77b4")
        # only the validated epochs, joined: with `train.validation_freq` the others have no value
        val = [(e, h[f"val_{key}"]) for e, h in zip(epochs, history, strict=True) if h.get(f"val_{key}") is not None]
        if val:
            ax.plot(*zip(*val, strict=True), ".-", label=f"validation {key}", color="#d62728")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right" if key == "loss" else "lower right")
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    finish_figure(fig, title or "Learning curves", fontsize=12)
    return fig


def prediction_titles(true: Sequence[int], pred: Sequence[int], prob: Sequence[float],
                      classes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Titles "Sneaker, prob=0.97" (wrong ones add the true class) and their colours."""
    titles, colors = [], []
    for t, p, q in zip(true, pred, prob, strict=True):
        title = f"{classes[p]}, prob={q:.2f}"
        if t != p:
            title += f"\n(true: {classes[t]})"
        titles.append(title)
        colors.append(RIGHT if t == p else WRONG)
    return titles, colors


def plot_predictions(images: np.ndarray, true: Sequence[int], pred: Sequence[int], prob: Sequence[float],
                     classes: Sequence[str], title: str | None = None) -> Figure:
    """A grid of test images titled with the predicted label and its probability; wrong ones in red."""
    titles, colors = prediction_titles(true, pred, prob, classes)
    n_wrong = sum(t != p for t, p in zip(true, pred, strict=True))
    head = title or f"Random test images: {len(true) - n_wrong} right, {n_wrong} wrong (red)"
    return image_grid(list(images), titles, colors=colors, suptitle=head)


def plot_mistakes(images: np.ndarray, true: Sequence[int], pred: Sequence[int], prob: Sequence[float],
                  classes: Sequence[str], total_wrong: int, total: int) -> Figure:
    """Misclassified test images, most confident mistakes first: "Coat → Shirt (0.91)"."""
    titles = [f"{classes[t]} → {classes[p]}\n({q:.2f})" for t, p, q in zip(true, pred, prob, strict=True)]
    head = f"Most confident mistakes (true → predicted, probability): {total_wrong:,} of {total:,} test images wrong"
    return image_grid(list(images), titles, colors=[WRONG] * len(titles), suptitle=head)


def plot_breakdown(confusion: np.ndarray, classes: Sequence[str], pairs: Sequence[tuple[str, str, int]]) -> Figure:
    """Tutorial 3's breakdown of the wrong predictions: confusion heat map, error per class, most-confused pairs."""
    conf = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    fig = new_figure(17, 5.6)
    ax = fig.add_subplot(1, 3, 1)
    rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [c[:12] for c in classes], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), [c[:12] for c in classes], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (counts; colour = row share)", fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=6 if n > 10 else 7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    ax = fig.add_subplot(1, 3, 2)
    totals = np.maximum(conf.sum(axis=1), 1)
    err = 1 - np.diag(conf) / totals
    order = np.argsort(err)[::-1]
    ax.barh(range(n), err[order] * 100, color=WRONG)
    ax.set_yticks(range(n), [classes[i][:14] for i in order], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("error rate (%)")
    ax.set_title("Error per class", fontsize=10)
    for y, v in enumerate(err[order] * 100):
        ax.text(v, y, f" {v:.1f}%", va="center", fontsize=7)
    ax.set_xlim(0, max(5.0, float(err.max() * 100) * 1.25))

    ax = fig.add_subplot(1, 3, 3)
    top = list(pairs)[:10]
    if top:
        ax.barh(range(len(top)), [c for _, _, c in top], color="#e67e22")
        ax.set_yticks(range(len(top)), [f"{t[:12]} → {p[:12]}" for t, p, _ in top], fontsize=8)
        ax.invert_yaxis()
        for y, (_, _, c) in enumerate(top):
            ax.text(c, y, f" {c}", va="center", fontsize=7)
        ax.set_xlim(0, max(c for _, _, c in top) * 1.2)
    else:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("images")
    ax.set_title("Most confused pairs (true → predicted)", fontsize=10)
    finish_figure(fig, "Breakdown of the wrong predictions", fontsize=12)
    return fig
