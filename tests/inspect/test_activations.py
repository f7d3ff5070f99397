"""Layer capture, execution order, feature-map grids and their figures."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.activations import capture, channel_maps, degenerate, execution_order, feature_map_grid

NORM = Normalizer((0.5,), (0.25,))


def test_capture_equals_a_manual_forward(keras_cnn_maps, images_maps) -> None:
    x = NORM(images_maps)
    out = capture(keras_cnn_maps, x, ["conv2d", "max_pooling2d_1", "dense"])
    m = keras_cnn_maps
    conv = torch.relu(nn.functional.conv2d(x, m.conv2d.weight, m.conv2d.bias))  # post-activation, as in Keras
    torch.testing.assert_close(out["conv2d"], conv)
    with torch.no_grad():
        pooled = m.max_pooling2d_1(m.conv2d_1(m.max_pooling2d(conv)))
        torch.testing.assert_close(out["max_pooling2d_1"], pooled)
        torch.testing.assert_close(out["dense"], m.dense(pooled.flatten(1)))
    assert out["conv2d"].shape == (3, 4, 12, 12)


def test_capture_restores_state_and_removes_hooks_even_on_error(keras_cnn_maps) -> None:
    keras_cnn_maps.train()
    bad = torch.zeros(1, 2, 14, 14)  # wrong channel count: the forward pass fails
    with pytest.raises(RuntimeError):
        capture(keras_cnn_maps, bad, ["conv2d"])
    assert keras_cnn_maps.training and all(m.training for m in keras_cnn_maps.modules())
    assert all(not m._forward_hooks for m in keras_cnn_maps.modules())


def test_capture_clones_before_an_inplace_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), relu=nn.ReLU(inplace=True), flatten=nn.Flatten()))
    x = torch.randn(2, 1, 5, 5)
    out = capture(model, x, ["conv"])
    torch.testing.assert_close(out["conv"], nn.functional.conv2d(x, model.conv.weight, model.conv.bias))
    assert (out["conv"] < 0).any()


def test_unknown_layer_lists_valid_names(keras_cnn_maps, images_maps) -> None:
    with pytest.raises(CnnlabError, match=r"unknown layer 'conv3'; valid: conv2d, conv2d_1, dense"):
        capture(keras_cnn_maps, NORM(images_maps), ["conv3"])
    with pytest.raises(CnnlabError, match=r"unknown feature-map layer 'nope'; valid: conv2d, conv2d_1, max_pooling2d"):
        channel_maps(keras_cnn_maps, images_maps[0], NORM, "nope")


def test_execution_order_follows_the_forward_pass(nested_cnn_maps) -> None:
    order = execution_order(nested_cnn_maps, (3, 8, 8))
    assert order == ["stem", "layer1", "layer1.0", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu",
                     "layer1.0.conv2", "layer1.1", "layer1.1.conv1", "layer1.1.bn1", "layer1.1.relu",
                     "layer1.1.conv2", "pool", "fc"]  # fc is defined first but runs last; aux never runs


def test_feature_map_grid_defaults_to_first_four_conv_pool_layers(keras_cnn_maps, images_maps) -> None:
    grid, names = feature_map_grid(keras_cnn_maps, images_maps, NORM, filter_index=1)
    assert names == ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"]
    assert len(grid) == 3 and all(len(row) == 4 for row in grid)
    assert [a.shape for a in grid[0]] == [(12, 12), (6, 6), (4, 4), (2, 2)]
    want = capture(keras_cnn_maps, NORM(images_maps), names)
    for i in range(3):
        for j, name in enumerate(names):
            np.testing.assert_allclose(grid[i][j], want[name][i, 1].numpy())


def test_feature_map_grid_on_a_nested_model(nested_cnn_maps) -> None:
    images = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    grid, names = feature_map_grid(nested_cnn_maps, images, NORM, filter_index=0)
    assert names == ["stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert grid[1][0].shape == (6, 6)


def test_feature_map_errors_name_channels_and_valid_layers(keras_cnn_maps, images_maps) -> None:
    with pytest.raises(CnnlabError, match=r"filter index 4 .* 'conv2d' with 4 channels; use 0..3"):
        feature_map_grid(keras_cnn_maps, images_maps, NORM, layers=["conv2d"], filter_index=4)
    with pytest.raises(CnnlabError, match=r"'dense' outputs \(8,\), not a \(C, H, W\) feature map; valid "
                                          r"feature-map layers: conv2d, max_pooling2d, conv2d_1, max_pooling2d_1"):
        channel_maps(keras_cnn_maps, images_maps[0], NORM, "dense")
    dense_only = nn.Sequential(OrderedDict(flatten=nn.Flatten(), dense=nn.Linear(196, 3)))
    with pytest.raises(CnnlabError, match="no conv or pooling layer"):
        feature_map_grid(dense_only, images_maps, NORM)


def test_channel_maps_are_one_images_captured_channels(keras_cnn_maps, images_maps) -> None:
    maps = channel_maps(keras_cnn_maps, images_maps[2], NORM, "conv2d_1")
    assert maps.shape == (6, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, capture(keras_cnn_maps, NORM(images_maps[2:3]), ["conv2d_1"])["conv2d_1"][0])


def test_degenerate_maps_are_named_not_drawn():
    assert degenerate(np.zeros((5, 5))) == "constant: every value is 0"
    assert degenerate(torch.full((3, 4), 2.5)) == "constant: every value is 2.5"
    assert degenerate(np.array([[0.7312]])) == "1×1: a single value (0.7312)"
    assert degenerate(np.array([[1.0, np.nan]])) == "not finite (NaN or inf values)"
    assert degenerate(np.zeros((0, 3))) == "empty"
    assert degenerate(np.array([[1e6, 1e6 + 0.1]])) == "constant: every value is 1e+06"  # rounding-level spread
    assert degenerate(np.array([[0.0, 1e-3]])) is None
    assert degenerate(np.arange(6.0).reshape(2, 3)) is None
