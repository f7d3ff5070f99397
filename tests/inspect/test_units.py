"""Unit responses over an image set and the top-k images of a unit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.activations import capture
from cnnlab.inspect.units import top_images, unit_scores


def test_scores_are_each_channels_spatial_mean(keras_cnn_maps, images_maps):
    norm = Normalizer()
    scores = unit_scores(keras_cnn_maps, images_maps, norm, "conv2d_1", batch_size=2)  # batches 2 + 1
    maps = capture(keras_cnn_maps, norm(images_maps), ["conv2d_1", "dense"])
    assert scores.shape == (3, 6) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, maps["conv2d_1"].mean(dim=(2, 3)).numpy(), rtol=1e-6)
    dense = unit_scores(keras_cnn_maps, images_maps, norm, "dense")
    np.testing.assert_allclose(dense, maps["dense"].numpy(), rtol=1e-6)


def test_the_forward_pass_stops_at_the_layer(keras_cnn_maps, images_maps):
    seen = []
    keras_cnn_maps.dense.register_forward_hook(lambda *a: seen.append(1))
    unit_scores(keras_cnn_maps, images_maps, Normalizer(), "conv2d")
    assert seen == []  # nothing after conv2d ran


def test_top_images_strongest_first_ties_by_index():
    scores = np.array([[0.1, 5.0], [0.9, 1.0], [0.9, 2.0], [0.3, 0.0]], np.float32)
    assert top_images(scores, 0, k=3) == [(1, pytest.approx(0.9)), (2, pytest.approx(0.9)), (3, pytest.approx(0.3))]
    assert [i for i, _ in top_images(scores, 1, k=9)] == [0, 2, 1, 3]  # k beyond N: all of them
    with pytest.raises(CnnlabError, match="unit 2 is out of range; the layer has units 0..1"):
        top_images(scores, 2)


def test_unknown_and_unused_layers(nested_cnn_maps):
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(CnnlabError, match="layer"):
        unit_scores(nested_cnn_maps, images, Normalizer(), "nope")
    with pytest.raises(CnnlabError, match="'aux' is not called"):
        unit_scores(nested_cnn_maps, images, Normalizer(), "aux")
    assert unit_scores(nested_cnn_maps, images, Normalizer(), "layer1.0.conv1").shape == (2, 4)
