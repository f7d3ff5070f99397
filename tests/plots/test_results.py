"""Figures of a run's results: learning curves, prediction grids with red mistakes, the mistakes breakdown."""

from __future__ import annotations

import numpy as np

from cnnlab.plots.common import RIGHT, WRONG, save_figure
from cnnlab.plots.results import (
    plot_breakdown,
    plot_curves,
    plot_mistakes,
    plot_predictions,
    prediction_titles,
)

CLASSES = ["cat", "dog", "bird"]
HISTORY = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.6, "val_loss": 0.8, "val_acc": 0.65},
           {"epoch": 2, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.75}]


def test_curves_have_loss_and_accuracy_panels(tmp_path, png_check_maps):
    fig = plot_curves(HISTORY)
    loss, acc = fig.axes
    assert fig.get_suptitle() == "Learning curves"
    assert [line.get_label() for line in loss.get_lines()] == ["training loss", "validation loss"]
    assert list(acc.get_lines()[1].get_ydata()) == [0.65, 0.75] and list(acc.get_xticks()) == [1, 2]
    png_check_maps(save_figure(fig, tmp_path / "curves.png"))
    no_val = plot_curves([{**h, "val_loss": None, "val_acc": None} for h in HISTORY], title="Mine")
    assert len(no_val.axes[0].get_lines()) == 1 and no_val.get_suptitle() == "Mine"
    every_2nd = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 0.5 if e % 2 == 0 else None,
                  "val_acc": 0.1 * e if e % 2 == 0 else None} for e in range(1, 6)]
    val = plot_curves(every_2nd).axes[1].get_lines()[1]  # train.validation_freq 2: one joined line, no gaps
    assert list(val.get_xdata()) == [2, 4] and list(val.get_ydata()) == [0.2, 0.4]


def test_prediction_titles_name_the_true_class_of_a_mistake():
    titles, colors = prediction_titles([0, 1], [0, 2], [0.971, 0.5], CLASSES)
    assert titles == ["cat, prob=0.97", "bird, prob=0.50\n(true: dog)"]
    assert colors == [RIGHT, WRONG]


def test_prediction_and_mistake_grids(tmp_path, png_check_maps):
    images = np.stack([np.full((1, 8, 8), v, np.uint8) for v in (0, 100, 200)])
    fig = plot_predictions(images, [0, 1, 2], [0, 2, 2], [0.9, 0.6, 0.8], CLASSES)
    assert fig.get_suptitle() == "Random test images: 2 right, 1 wrong (red)" and len(fig.axes) == 3
    assert fig.axes[1].title.get_color() == WRONG and fig.axes[0].title.get_color() == RIGHT
    png_check_maps(save_figure(fig, tmp_path / "predictions.png"))
    fig = plot_mistakes(images[:2], [1, 0], [2, 1], [0.91, 0.55], CLASSES, total_wrong=120, total=1000)
    assert [a.get_title() for a in fig.axes] == ["dog → bird\n(0.91)", "cat → dog\n(0.55)"]
    assert fig.get_suptitle() == ("Most confident mistakes (true → predicted, probability): 120 of 1,000 test "
                                  "images wrong")


def test_breakdown_panels(tmp_path, png_check_maps):
    confusion = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    fig = plot_breakdown(confusion, CLASSES, [("cat", "dog", 2), ("dog", "cat", 1)])
    heat, errors, pairs = fig.axes[0], fig.axes[2], fig.axes[3]  # the colour bar is axes 1
    assert fig.get_suptitle() == "Breakdown of the wrong predictions"
    assert [t.get_text() for t in heat.texts] == ["8", "2", "1", "9", "10"]  # zero cells stay empty
    assert [t.get_text() for t in errors.texts] == [" 20.0%", " 10.0%", " 0.0%"]  # worst class first
    assert [t.get_text() for t in pairs.get_yticklabels()] == ["cat → dog", "dog → cat"]
    png_check_maps(save_figure(fig, tmp_path / "breakdown.png"))
    perfect = plot_breakdown(np.eye(3, dtype=int) * 5, CLASSES, [])
    assert [t.get_text() for t in perfect.axes[3].texts] == ["no mistakes"]
