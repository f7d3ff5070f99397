"""Figures of maps and weights: feature-map grids, channels, filters, templates, the kernel demo, the
architecture diagram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.activations import channel_maps, feature_map_grid
from cnnlab.inspect.architecture import architecture_diagram
from cnnlab.inspect.weights import conv_filters, dense_templates
from cnnlab.plots.common import save_figure
from cnnlab.plots.maps import (
    plot_architecture,
    plot_channel_maps,
    plot_feature_grid,
    plot_filters,
    plot_kernel_demo,
    plot_templates,
)

NORM = Normalizer((0.5,), (0.25,))
# out[r, c] = 8 × centre − sum of the 8 neighbours of pixel (r + 1, c + 1), clipped to 0..255 (see
# tests/inspect/test_kernels.py): (0, 1) is 8·10 − 120 = −40 → 0.
IMAGE = np.array([[10, 10, 10, 10],
                  [10, 20, 10, 10],
                  [10, 10, 40, 10],
                  [10, 10, 10, 10]], dtype=np.uint8)


def test_channel_maps_and_feature_grid_figures(keras_cnn_maps, images_maps, tmp_path, png_check_maps) -> None:
    maps = channel_maps(keras_cnn_maps, images_maps[2], NORM, "conv2d_1")
    fig = plot_channel_maps(maps, layer="conv2d_1")
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # one panel per channel
    png_check_maps(save_figure(fig, tmp_path / "channels.png"))

    grid, names = feature_map_grid(keras_cnn_maps, images_maps, NORM)
    fig = plot_feature_grid(grid, names, row_labels=["#0 · a", "#7 · b", "#26 · c"], filter_index=1)
    assert len(fig.axes) == 12
    assert fig.axes[0].get_title() == "conv2d\n12×12" and fig.axes[4].get_ylabel() == "#7 · b"
    png_check_maps(save_figure(fig, tmp_path / "grid.png"))


def test_filter_and_template_figures(keras_cnn_maps, dense_net_maps, tmp_path, png_check_maps) -> None:
    fig = plot_filters(conv_filters(keras_cnn_maps, "conv2d_1"), layer="conv2d_1")
    assert len(fig.axes) == 6
    png_check_maps(save_figure(fig, tmp_path / "filters.png"))
    torch.manual_seed(0)
    rgb = plot_filters(conv_filters(nn.Sequential(nn.Conv2d(3, 5, 3))))
    assert len(rgb.axes) == 5 and rgb.axes[0].get_images()[0].get_array().shape == (3, 3, 3)  # colour panels
    fig = plot_templates(dense_templates(dense_net_maps), ["cat", "dog", "bird"])
    assert len(fig.axes) == 3 and [a.get_title() for a in fig.axes] == ["cat", "dog", "bird"]
    assert fig.get_suptitle() == "What the network sees"
    png_check_maps(save_figure(fig, tmp_path / "templates.png"))
    with pytest.raises(CnnlabError, match="2 class names for 3 templates"):
        plot_templates(dense_templates(dense_net_maps), ["cat", "dog"])


def test_kernel_demo_figure(tmp_path, png_check_maps) -> None:
    img = np.zeros((14, 14), dtype=np.uint8)
    img[4:10, 4:10] = 200  # a bright square: edges light up, its inside and the background stay 0
    fig = plot_kernel_demo(img)
    assert len(fig.axes) == 4  # image, after the kernel, after pooling, the patch table
    assert [a.get_title() for a in fig.axes[:3]] == ["original 14×14", "after the kernel 12×12",
                                                      "after 2×2 max-pool 6×6"]
    texts = [t.get_text() for t in fig.axes[3].texts]
    assert "sum = 1000\nclipped to 0..255 → 255" in texts  # default patch: the strongest output (a corner)
    png_check_maps(save_figure(fig, tmp_path / "kernel.png"))
    fig = plot_kernel_demo(IMAGE, row=0, col=1)
    assert "sum = -40\nclipped to 0..255 → 0" in [t.get_text() for t in fig.axes[3].texts]


def test_plot_architecture(keras_cnn_maps, tmp_path, png_check_maps) -> None:
    fig = plot_architecture(architecture_diagram(keras_cnn_maps, (1, 14, 14)), title="tiny")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert sum(isinstance(p, FancyBboxPatch) for p in ax.patches) == 8  # input + 7 layers
    texts = [t.get_text() for t in ax.texts]
    assert "conv2d_1: KConv2D" in texts and "(None, 4, 4, 6)  ·  222 params" in texts
    png_check_maps(save_figure(fig, tmp_path / "arch.png"))

    deep = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(20)])  # 40 layers
    fig = plot_architecture(architecture_diagram(deep, (1, 1, 4)))
    assert sum(isinstance(p, FancyBboxPatch) for p in fig.axes[0].patches) == 41
    assert fig.get_figwidth() < 16 and fig.get_figheight() < 16
    png_check_maps(save_figure(fig, tmp_path / "deep.png"))
