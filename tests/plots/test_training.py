"""Figures about training: variants side by side, the learning-rate range test."""

from __future__ import annotations

import numpy as np

from cnnlab.plots.common import save_figure
from cnnlab.plots.training import plot_lr_find, plot_variants


def test_lr_find_plot_marks_the_suggestion_on_a_log_axis(tmp_path, png_check_maps):
    lrs = list(np.geomspace(1e-6, 1.0, 50))
    losses = [2.3 - 0.5 * (lr > 1e-3) + 10 * lr for lr in lrs]
    fig = plot_lr_find(lrs, losses, losses, 1e-3 * 1.2, title="T")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
    labels = [line.get_label() for line in ax.get_lines()]
    assert "suggested lr 0.0012" in labels and "smoothed" in labels
    mark = ax.get_lines()[labels.index("suggested lr 0.0012")]
    assert mark.get_xdata()[0] == min(lrs, key=lambda lr: abs(np.log(lr) - np.log(1.2e-3)))  # on the curve
    png_check_maps(save_figure(fig, tmp_path / "lr.png"))
    assert "suggested" not in str([line.get_label() for line in plot_lr_find(lrs, losses, losses, None).axes[0].get_lines()])


def test_variant_curves_name_failed_variants(tmp_path, png_check_maps):
    history = [{"epoch": 1, "val_acc": 0.5, "train_loss": 1.0}, {"epoch": 2, "val_acc": 0.7, "train_loss": 0.6}]
    fig = plot_variants([("a", False, history), ("b", True, history[:1]), ("c", True, [])], "Compare x")
    assert fig.texts[0].get_text() == "Compare x: 3 variants, 2 failed"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b (failed)"]
    png_check_maps(save_figure(fig, tmp_path / "v.png"))
