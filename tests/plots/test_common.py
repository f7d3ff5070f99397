"""Figure helpers: near-square grids, display ranges, image grids, overlays, saving and data URIs."""

from __future__ import annotations

import base64
import io
import os
import stat

import numpy as np
from matplotlib.image import imread
from PIL import Image

from cnnlab.plots.common import (
    figure_data_uri,
    finish_figure,
    grid_shape,
    image_grid,
    new_figure,
    overlay,
    save_figure,
    to_display,
    value_range,
)


def test_grid_shape_is_near_square() -> None:
    assert [grid_shape(n) for n in (64, 32, 10, 7, 1)] == [(8, 8), (4, 8), (2, 5), (3, 3), (1, 1)]


def test_display_ranges_and_layouts():
    assert value_range(np.zeros(1, np.uint8)) == (0, 255) and value_range(np.zeros(1, np.float32)) == (0.0, 1.0)
    grey, cmap = to_display(np.zeros((1, 4, 5)))
    assert grey.shape == (4, 5) and cmap == "gray"
    rgb, cmap = to_display(np.zeros((3, 4, 5)))
    assert rgb.shape == (4, 5, 3) and cmap is None
    assert to_display(np.zeros((4, 5)))[0].shape == (4, 5)


def test_image_grid_titles_colours_and_columns(png_check_maps, tmp_path):
    images = [np.full((1, 8, 8), v, np.uint8) for v in (0, 80, 160, 240, 40)]
    fig = image_grid(images, [f"#{i}" for i in range(5)], colors=["red"] * 5, cols=2, suptitle="Five")
    assert len(fig.axes) == 5 and [a.get_title() for a in fig.axes] == ["#0", "#1", "#2", "#3", "#4"]
    assert fig.axes[0].title.get_color() == "red" and fig.get_suptitle() == "Five"
    assert fig.axes[2].get_subplotspec().rowspan.start == 1  # 2 columns: the third image starts row 2
    png_check_maps(save_figure(fig, tmp_path / "grid.png"))
    assert len(image_grid(images[:4]).axes) == 4


def test_overlay_draws_the_image_and_the_normalised_heat():
    fig = new_figure(2, 2)
    ax = fig.add_subplot(1, 1, 1)
    overlay(ax, np.zeros((1, 4, 4), np.uint8), np.arange(16.0).reshape(4, 4) + 5)
    base, heat = ax.get_images()
    assert base.get_array().shape == (4, 4) and heat.get_alpha() == 0.5
    assert float(heat.get_array().min()) == 0.0 and float(heat.get_array().max()) == 1.0
    overlay(ax, np.zeros((3, 4, 4), np.uint8), np.ones((4, 4)))  # a flat heat map: all zeros, no NaN
    assert float(np.asarray(ax.get_images()[-1].get_array()).max()) == 0.0


def test_save_figure_and_data_uri(tmp_path):
    fig = new_figure(3, 2)
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    finish_figure(fig, "A title")
    assert fig.get_suptitle() == "A title"
    old = os.umask(0o027)
    try:
        path = save_figure(fig, tmp_path / "sub" / "f.png")
    finally:
        os.umask(old)
    assert path == tmp_path / "sub" / "f.png" and imread(path).shape[2] == 4
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and [p.name for p in path.parent.iterdir()] == ["f.png"]
    uri = figure_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
