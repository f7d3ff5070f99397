"""Keras-style layer lists: TensorFlow padding, shapes, errors, the fused training and inference paths."""

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.models.seeds import seed_layers
from cnnlab.models.spec import ACTIVATIONS, build_spec
from cnnlab.models.specshape import ACTIVATION_NAMES


def test_same_padding_with_stride_matches_tensorflow():
    # TF 'same': output ceil(n / s); 7 → 4 with stride 2 and k=3 needs 2 pixels of padding split 1/1,
    # 8 → 4 needs 1 pixel, all at the end (asymmetric).
    for size, expected in ((7, 4), (8, 4)):
        m = build_spec([{"type": "Conv2D", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"},
                        {"type": "MaxPooling2D", "pool_size": 3, "strides": 2, "padding": "same"},
                        {"type": "Flatten"}], input_shape=(1, size, size))
        assert m.conv2d(torch.zeros(1, 1, size, size)).shape[-1] == expected
        assert m(torch.zeros(1, 1, size, size)).shape == (1, 2 * (-(-expected // 2)) ** 2)


def test_asymmetric_same_padding_pads_the_end():
    m = build_spec([{"type": "Conv2D", "filters": 1, "kernel_size": 2, "padding": "same", "use_bias": False},
                    {"type": "Flatten"}], input_shape=(1, 3, 3))
    with torch.no_grad():
        m.conv2d.weight.fill_(1.0)
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    y = m.conv2d(x)[0, 0]
    # k=2: TF pads one pixel at the bottom/right only, so the top-left output sums x[0:2, 0:2].
    assert y.shape == (3, 3)
    assert y[0, 0].item() == 0 + 1 + 3 + 4
    assert y[2, 2].item() == 8


def test_average_same_pool_ignores_padding():
    m = build_spec([{"type": "AveragePooling2D", "pool_size": 2, "padding": "same"}, {"type": "Flatten"}],
                   input_shape=(1, 3, 3))
    y = m(torch.ones(1, 1, 3, 3))
    assert torch.allclose(y, torch.ones_like(y))


def test_kernel_larger_than_input_is_a_clear_error():
    with pytest.raises(CnnlabError, match=r"model.layers.5 \(conv2d_2: Conv2D\): kernel 3x3 is larger than its 2x2 input"):
        # 28 → 26 → 13 → 11 → 5 → pool 2 → a 3x3 kernel cannot fit
        build_spec([*seed_layers("cnn_64x2")[:4], {"type": "MaxPooling2D"},
                    {"type": "Conv2D", "filters": 8, "kernel_size": 3}, {"type": "Flatten"}],
                   input_shape=(1, 28, 28))


@pytest.mark.parametrize("layers, message", [
    ([{"type": "Conv3D"}], "unknown layer type in model.layers.0 'Conv3D'; valid: Activation"),
    ([{"type": "Conv2D", "filters": 4}], "missing 'kernel_size'"),
    ([{"type": "Conv2D", "filters": 4, "kernel_size": 3, "stride": 2}], "unknown key 'stride'; valid: activation"),
    ([{"type": "Dense", "units": 10}], "add a Flatten"),
    ([{"type": "Flatten"}, {"type": "Conv2D", "filters": 4, "kernel_size": 3}], "move it before Flatten"),
    ([{"type": "Flatten"}, {"type": "Dense", "units": 10, "activation": "swoosh"}], "unknown activation"),
    ([{"type": "Flatten"}, {"type": "Dropout", "rate": 1.5}], "rate must be a number in"),
    ([{"type": "Conv2D", "filters": 0, "kernel_size": 3}], "filters must be an integer"),
    ([{"type": "Conv2D", "filters": 2, "kernel_size": 3}], "end with Flatten and Dense"),
    (["conv"], "must be a mapping"),
])
def test_bad_specs(layers, message):
    with pytest.raises(CnnlabError, match=message):
        build_spec(layers, input_shape=(1, 28, 28))


def test_class_count_must_match():
    with pytest.raises(CnnlabError, match="outputs 10 values but the data has 3 classes"):
        build_spec([{"type": "Flatten"}, {"type": "Dense", "units": 10}], input_shape=(1, 4, 4), num_classes=3)


def test_fused_training_path_equals_eval_path_and_gradients():
    torch.manual_seed(0)
    model = create_model("cnn_64x2", num_classes=10, input_shape=(1, 28, 28))
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    y_eval = model(x)
    (g_eval,) = torch.autograd.grad(y_eval.sum(), model.conv2d.weight)
    model.train()  # no dropout in this model, so train/eval differ only by the conv→pool→relu order
    y_train = model(x)
    (g_train,) = torch.autograd.grad(y_train.sum(), model.conv2d.weight)
    assert torch.allclose(y_eval, y_train, atol=1e-6)
    assert torch.allclose(g_eval, g_train, atol=1e-5)


def test_keras_batchnorm_momentum_translates():
    m = build_spec([{"type": "Conv2D", "filters": 3, "kernel_size": 3}, {"type": "BatchNormalization"},
                    {"type": "Flatten"}], input_shape=(1, 5, 5))
    bn = m.batch_normalization
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)


def test_batchnorm_center_and_scale_off_leave_nothing_to_learn():
    m = build_spec([{"type": "Conv2D", "filters": 3, "kernel_size": 3, "use_bias": False},
                    {"type": "BatchNormalization", "center": False, "scale": False}, {"type": "Flatten"}],
                   input_shape=(1, 5, 5))
    bn = m.batch_normalization
    assert [n for n, _ in m.named_parameters()] == ["conv2d.weight"]  # Keras: no beta, no gamma
    assert set(m.state_dict()) == {"conv2d.weight", "batch_normalization.running_mean",
                                   "batch_normalization.running_var", "batch_normalization.num_batches_tracked"}
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))
    x = torch.randn(4, 3, 3, 3)
    assert torch.allclose(bn.eval()(x), x / torch.sqrt(torch.tensor(1 + 1e-3)))  # fresh statistics: 0 and 1
    with pytest.raises(CnnlabError, match="center must be true or false"):
        build_spec([{"type": "BatchNormalization", "center": "no"}, {"type": "Flatten"}], input_shape=(1, 5, 5))


@pytest.mark.parametrize("shape, k, s, pad", [((1, 28, 28), 3, 1, "valid"), ((3, 32, 32), 3, 1, "same"),
                                              ((3, 33, 33), 3, 2, "same"), ((1, 28, 28), 5, 1, "valid")])
def test_conv_padding_matches_tensorflow_and_marks_small_fan_in(shape, k, s, pad):
    m = build_spec([{"type": "Conv2D", "filters": 8, "kernel_size": k, "strides": s, "padding": pad},
                    {"type": "Flatten"}], input_shape=shape)
    conv = m.conv2d
    x = torch.randn(2, *shape)
    size = shape[1]
    out = -(-size // s) if pad == "same" else (size - k) // s + 1
    total = max((out - 1) * s + k - size, 0) if pad == "same" else 0  # TF: the extra pixel goes right/bottom
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (total // 2, total - total // 2) * 2),
                                      conv.weight, conv.bias, stride=s)
    assert torch.allclose(conv(x), want, atol=1e-5)
    assert conv.small_fan_in == (shape[0] * k * k <= 27)


def test_plain_inference_takes_the_fused_path_and_hooks_still_see_keras_outputs():
    torch.manual_seed(0)
    model = create_model("cnn_64x2", num_classes=10, input_shape=(1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        assert model._plain_inference()
        y_fused = model(x)
    seen = {}
    handle = model.conv2d.register_forward_hook(lambda m, i, o: seen.setdefault("conv", o.detach()))
    with torch.inference_mode():
        assert not model._plain_inference()  # a hook is watching: run layer by layer
        y_layers = model(x)
    handle.remove()
    assert torch.allclose(y_fused, y_layers, atol=1e-6)
    assert seen["conv"].shape == (3, 64, 26, 26) and seen["conv"].min() >= 0  # post-ReLU, as Keras


def test_every_activation_a_list_may_name_has_a_function():
    assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES)
