"""One output value recomputed by hand: conv, pooling, dense, activation, batch norm and the softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.inspect.arithmetic import (
    conv_pixel,
    dense_unit,
    explain,
    explainable,
    pool_pixel,
    softmax_math,
)
from cnnlab.inspect.kernels import EDGE_KERNEL, patch_numbers
from cnnlab.models.spec import build_spec

IMAGE = np.array([[10, 10, 10, 10],
                  [10, 20, 10, 10],
                  [10, 10, 40, 10],
                  [10, 10, 10, 10]], dtype=np.float64)


def test_the_tutorials_kernel_demo_is_the_one_channel_case():
    p = conv_pixel(IMAGE[None], EDGE_KERNEL[None, None], None, 0, 0, 1, activation="relu")
    demo = patch_numbers(IMAGE, EDGE_KERNEL, 0, 1)
    np.testing.assert_array_equal(p.patch[0], demo.patch)
    np.testing.assert_array_equal(p.products[0], demo.products)
    assert (p.pre_activation, p.output, p.bias) == (-40.0, 0.0, 0.0)  # relu(-40) = 0, as the demo clips
    assert conv_pixel(IMAGE[None], EDGE_KERNEL[None, None], np.array([5.0]), 0, 1, 1).output == 235.0  # 230 + bias


def test_padding_shows_as_zeros_and_moves_the_origin():
    k = np.ones((1, 1, 3, 3))
    p = conv_pixel(IMAGE[None], k, None, 0, 0, 0, pad=(1, 1, 1, 1))
    assert p.origin == (-1, -1)
    np.testing.assert_array_equal(p.patch[0], [[0, 0, 0], [0, 10, 10], [0, 10, 20]])
    assert p.pre_activation == 50.0


@pytest.mark.parametrize(("stride", "pad", "dilation", "groups"), [
    ((1, 1), (0, 0, 0, 0), (1, 1), 1), ((2, 1), (1, 2, 0, 1), (1, 1), 1), ((1, 1), (2, 2, 2, 2), (2, 2), 1),
    ((2, 2), (1, 1, 1, 1), (1, 1), 2)])
def test_every_position_agrees_with_torch(stride, pad, dilation, groups):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    ref = F.conv2d(F.pad(x[None], pad), w, b, stride=stride, dilation=dilation, groups=groups)[0]
    for c, r, col in np.ndindex(*ref.shape):
        p = conv_pixel(x.numpy(), w.numpy(), b.numpy(), c, r, col, stride=stride, pad=pad, dilation=dilation,
                       groups=groups)
        assert p.pre_activation == pytest.approx(float(ref[c, r, col]), abs=1e-12)  # float64 both ways
    assert len(p.input_channels) == 4 // groups


def test_a_position_outside_the_output_is_a_clear_error():
    with pytest.raises(CnnlabError, match=r"output position \(0, 2, 0\) is outside the layer's output \(1, 2, 2\); "
                                          r"use 0..0, 0..1, 0..1"):
        conv_pixel(IMAGE[None], EDGE_KERNEL[None, None], None, 0, 2, 0)


def test_max_and_average_pooling_windows():
    x = IMAGE[None]
    p = pool_pixel(x, "max", 0, 0, 1, size=(2, 2), stride=(2, 2))
    np.testing.assert_array_equal(p.window, [[10, 10], [10, 10]])
    p = pool_pixel(x, "max", 0, 1, 1, size=(2, 2), stride=(2, 2))
    assert (p.output, p.winner, p.origin) == (40.0, (0, 0), (2, 2))
    # 'same' padding on the right/bottom: the corner window has one real pixel, and padding never counts
    a = pool_pixel(x, "avg", 0, 1, 1, size=(3, 3), stride=(2, 2), pad=(0, 1, 0, 1))
    assert np.isnan(a.window[2]).all() and a.output == pytest.approx((40 + 10 + 10 + 10) / 4)
    assert a.to_dict()["window"][2] == [None, None, None]  # NaN becomes JSON null
    with pytest.raises(CnnlabError, match="pooling"):
        pool_pixel(x, "median", 0, 0, 0, size=(2, 2), stride=(2, 2))


def test_a_dense_unit_lists_its_largest_terms_and_sums_the_rest():
    x = np.array([1.0, -2.0, 0.5, 3.0])
    w = np.array([[0.1, 0.2, 0.3, -0.4], [1.0, 1.0, 1.0, 1.0]])
    u = dense_unit(x, w, np.array([0.05, 0.0]), 0, activation="relu", top=2)
    assert [t[0] for t in u.terms] == [3, 1]  # |-1.2| > |-0.4| > |0.15| > |0.1|
    assert u.rest == pytest.approx(0.1 + 0.15)
    assert u.pre_activation == pytest.approx(-1.2 - 0.4 + 0.25 + 0.05)
    assert u.output == 0.0 and u.inputs == 4


def test_softmax_step_by_step():
    s = softmax_math(np.array([2.0, 1.0, -1.0]))
    np.testing.assert_array_equal(s.shifted, [0.0, -1.0, -3.0])
    np.testing.assert_allclose(s.probs, torch.softmax(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64), 0),
                               rtol=1e-15)
    assert s.total == pytest.approx(1 + np.exp(-1) + np.exp(-3))


SPEC = [{"type": "Conv2D", "filters": 3, "kernel_size": 3, "padding": "same", "strides": 2, "activation": "relu"},
        {"type": "BatchNormalization"}, {"type": "Conv2D", "filters": 4, "kernel_size": 2, "activation": "tanh"},
        {"type": "AveragePooling2D", "pool_size": 2, "padding": "same"}, {"type": "Activation", "activation": "relu"},
        {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Flatten"},
        {"type": "Dense", "units": 5, "activation": "relu"}, {"type": "Dense", "units": "num_classes"}]


@pytest.fixture
def spec_model():
    torch.manual_seed(0)
    model = build_spec(SPEC, input_shape=(1, 9, 9), num_classes=3).eval()
    bn = model.batch_normalization  # non-trivial running statistics
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model


def test_every_layer_of_a_trained_style_model_recomputes_its_own_output(spec_model):
    x = torch.randn(1, 1, 9, 9, generator=torch.Generator().manual_seed(3))
    checked = set()
    for layer in ("conv2d", "batch_normalization", "conv2d_1", "average_pooling2d", "activation",
                  "max_pooling2d", "dense", "dense_1"):
        for position in (None, (0,), (1,)):
            r = explain(spec_model, x, layer, position)
            # the layer computed in float32, the recomputation in float64
            assert r.output == pytest.approx(r.actual, rel=1e-5, abs=1e-6), (layer, position)
            checked.add(r.kind)
    assert checked == {"conv", "element", "pool", "dense"}
    # 'same' at stride 2 on 9 pixels: 5 outputs need 11 = 9 + 1 + 1, so the first patch starts in the padding
    assert explain(spec_model, x, "conv2d", (2, 0, 0)).origin == (-1, -1)


def test_leaving_out_the_pixel_picks_the_channels_strongest(spec_model):
    x = torch.randn(1, 1, 9, 9, generator=torch.Generator().manual_seed(4))
    r = explain(spec_model, x, "conv2d", (1,))
    with torch.no_grad():
        out = spec_model.conv2d(F.pad(x, spec_model.conv2d.extra_pad or (0, 0, 0, 0)))[0, 1]
    assert r.actual == pytest.approx(float(out.max()))


def test_unexplainable_and_unknown_layers(spec_model):
    x = torch.zeros(1, 1, 9, 9)
    assert explainable(spec_model, "conv2d") and not explainable(spec_model, "flatten")
    with pytest.raises(CnnlabError, match="'flatten' \\(Flatten\\) has no arithmetic"):
        explain(spec_model, x, "flatten")
    with pytest.raises(CnnlabError, match="conv2d_9"):
        explain(spec_model, x, "conv2d_9")
    with pytest.raises(CnnlabError, match="outside"):
        explain(spec_model, x, "dense", (5,))
