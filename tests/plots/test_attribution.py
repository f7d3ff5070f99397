"""Attribution and maximisation figures: overlays per image and method, maximised filters and classes, stretch."""

from __future__ import annotations

import matplotlib.image as plt_image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.inspect.attribution import gradcam, integrated_gradients, occlusion, saliency
from cnnlab.inspect.maximize import maximize_classes, maximize_filters
from cnnlab.plots.attribution import plot_class_maximized, plot_maximized, plot_overlays, stretch
from cnnlab.plots.common import save_figure

NORM = Normalizer()  # the patch_net's normalisation
SHAPE = (1, 16, 16)  # the keras_net's input
MAX_NORM = Normalizer((0.4,), (0.25,))  # non-trivial normalisation, so the [0, 1] ↔ model-space map matters


def test_plot_overlays_has_a_panel_per_image_and_method(patch_net, tmp_path) -> None:
    model, images, labels = patch_net
    u8 = images[labels == 1][:3]
    x = NORM(u8)
    heats = {"occlusion": occlusion(model, x, 1), "saliency": saliency(model, x, 1),
             "IG": integrated_gradients(model, x, 1, steps=8), "Grad-CAM": gradcam(model, x, 1)}
    fig = plot_overlays(u8, heats, titles=["patch"] * 3)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 5
    png = plt_image.imread(save_figure(fig, tmp_path / "overlays.png"))
    assert png[..., :3].std() > 0.05  # not blank
    assert len(plot_overlays(NORM.denormalize(x), heats["saliency"], method="saliency").axes) == 3 * 2
    with pytest.raises(ValueError, match="shape"):
        plot_overlays(u8, heats["saliency"][:2])


def test_plots_have_a_panel_per_image(keras_net: nn.Module, tmp_path) -> None:
    kw = {"input_shape": SHAPE, "normalizer": MAX_NORM, "steps": 8}
    per_layer = {"conv2d": maximize_filters(keras_net, "conv2d", 3, **kw),
                 "block.conv": maximize_filters(keras_net, "block.conv", [1, 4], **kw)}
    fig = plot_maximized(per_layer)
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    assert plt_image.imread(save_figure(fig, tmp_path / "filters.png"))[..., :3].std() > 0.05
    assert len(plot_maximized({"conv2d": per_layer["conv2d"].images}).axes) == 3
    classes = maximize_classes(keras_net, [0, 2], **kw)
    fig = plot_class_maximized(classes, ["cat", "dog", "frog"])
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("frog")
    assert plt_image.imread(save_figure(fig, tmp_path / "classes.png"))[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="2 class names for 3 images"):
        plot_class_maximized(per_layer["conv2d"].images, ["a", "b"])


def test_stretch_expands_faint_patterns_but_keeps_flat_images() -> None:
    low_contrast = 0.5 + 0.15 * torch.linspace(-1, 1, 64).view(1, 8, 8)
    out = stretch(low_contrast, low=0, high=100)
    assert out.min() == 0 and out.max() == 1
    faint = stretch(0.5 + 0.02 * torch.linspace(-1, 1, 64).view(1, 8, 8), low=0, high=100)
    assert abs(faint.min() - 0.4) < 1e-3 and abs(faint.max() - 0.6) < 1e-3  # gain capped at 5×
    assert np.allclose(stretch(torch.ones(3, 4, 4)), 1) and np.allclose(stretch(torch.zeros(1, 4, 4)), 0)
    tiny = stretch(0.01 * torch.rand(1, 8, 8))  # near-black noise: at most 5× gain, stays dark
    assert tiny.max() <= 0.3
