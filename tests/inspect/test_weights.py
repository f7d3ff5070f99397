"""Conv filters, dense templates and their figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.inspect.weights import conv_filters, dense_templates


def test_conv_filters_default_to_the_first_conv(keras_cnn_maps, nested_cnn_maps) -> None:
    w = conv_filters(keras_cnn_maps)
    assert w.shape == (4, 1, 3, 3) and w.dtype == np.float32
    np.testing.assert_array_equal(w, keras_cnn_maps.conv2d.weight.detach().numpy())
    assert conv_filters(keras_cnn_maps, "conv2d_1").shape == (6, 4, 3, 3)
    assert conv_filters(nested_cnn_maps).shape == (4, 3, 3, 3)  # "stem", not a block's conv
    assert conv_filters(nested_cnn_maps, "layer1.1.conv2").shape == (4, 4, 3, 3)


def test_conv_filter_errors(keras_cnn_maps, dense_net_maps) -> None:
    with pytest.raises(CnnlabError, match=r"unknown conv layer 'dense'; valid: conv2d, conv2d_1"):
        conv_filters(keras_cnn_maps, "dense")
    with pytest.raises(CnnlabError, match="no Conv2d layer"):
        conv_filters(dense_net_maps)


def test_dense_templates_are_the_weight_product(dense_net_maps) -> None:
    t = dense_templates(dense_net_maps)  # 16 inputs → inferred (1, 4, 4)
    assert t.shape == (3, 1, 4, 4) and t.dtype == np.float32
    m = dense_net_maps
    # Keras orientation: W = W1 @ W2 @ W3 with Wk = weightᵀ, shape (16, 3); class c's template is W[:, c].
    w = m.dense.weight.T @ m.dense_1.weight.T @ m.dense_2.weight.T
    np.testing.assert_allclose(t.reshape(3, 16), w.T.detach().numpy(), rtol=1e-5, atol=1e-6)
    # the linear part of the score: template · x equals the model's output for a bias-free, ReLU-free copy
    x = torch.rand(1, 1, 4, 4)
    linear = (x.flatten() @ w).detach().numpy()
    np.testing.assert_allclose((t * x.numpy()).sum(axis=(1, 2, 3)), linear, rtol=1e-5, atol=1e-6)


def test_dense_template_shapes_and_errors(dense_net_maps, keras_cnn_maps) -> None:
    rgb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    assert dense_templates(rgb).shape == (4, 3, 8, 8)
    assert dense_templates(dense_net_maps, (1, 2, 8)).shape == (3, 1, 2, 8)
    with pytest.raises(CnnlabError, match="need a fully-connected model .* 'conv2d' is a convolution"):
        dense_templates(keras_cnn_maps)
    with pytest.raises(CnnlabError, match=r"input shape \(1, 3, 3\) has 9 values but the first dense layer"):
        dense_templates(dense_net_maps, (1, 3, 3))
    with pytest.raises(CnnlabError, match="cannot tell the image shape behind 10 input features"):
        dense_templates(nn.Sequential(nn.Flatten(), nn.Linear(10, 2)))
