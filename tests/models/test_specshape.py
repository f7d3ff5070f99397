"""A layer list checked and sized without torch: output shapes, Keras's parameter counts, the one-line errors."""

import re
import subprocess
import sys

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.models.specshape import infer_spec, out_size, same_pad


def test_every_layer_type_gets_its_shape_and_keras_parameter_count():
    layers = [
        {"type": "Conv2D", "filters": 8, "kernel_size": [3, 5], "strides": 2, "padding": "same", "use_bias": False},
        {"type": "BatchNormalization", "center": False},
        {"type": "Activation", "activation": "relu"},
        {"type": "MaxPooling2D", "pool_size": 3, "strides": 1},
        {"type": "AveragePooling2D", "padding": "same"},
        {"type": "Dropout", "rate": 0.25},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "name": "squeeze"},
        {"type": "GlobalMaxPooling2D"},
        {"type": "Dense", "units": "num_classes", "activation": "softmax"},
    ]
    found = infer_spec(layers, input_shape=(3, 15, 20), num_classes=6)
    assert [(f.name, f.out_shape, f.params, f.trainable) for f in found] == [
        ("conv2d", (8, 8, 10), 8 * 3 * 3 * 5, 8 * 3 * 3 * 5),  # same: ceil(15/2), ceil(20/2); no bias
        ("batch_normalization", (8, 8, 10), 8 + 2 * 8, 8),  # gamma trained; moving mean and variance are not
        ("activation", (8, 8, 10), 0, 0),
        ("max_pooling2d", (8, 6, 8), 0, 0),  # valid, 3x3 at stride 1
        ("average_pooling2d", (8, 3, 4), 0, 0),  # same, 2x2 at stride 2 (pool_size's default)
        ("dropout", (8, 3, 4), 0, 0),
        ("squeeze", (4, 3, 4), 4 * (8 + 1), 4 * (8 + 1)),
        ("global_max_pooling2d", (4,), 0, 0),
        ("dense", (6,), 6 * (4 + 1), 6 * (4 + 1)),
    ]
    assert found[0].args["pad"] == (1, 2, 1, 1)  # (left, right, top, bottom): the odd pixel at the end
    assert found[-1].settings == {"type": "Dense", "name": "dense", "units": 6, "activation": "softmax"}
    assert found[3].in_shape == (8, 8, 10)


def test_flatten_multiplies_and_a_flat_batchnorm_counts_its_features():
    found = infer_spec([{"type": "Flatten"}, {"type": "BatchNormalization", "scale": False, "center": False},
                        {"type": "Dense", "units": 3, "use_bias": False}], input_shape=(2, 4, 5))
    assert [(f.out_shape, f.params, f.trainable) for f in found] == [((40,), 0, 0), ((40,), 80, 0), ((3,), 120, 120)]


def test_tensorflow_window_arithmetic():
    assert [out_size(n, 3, 2, "valid") for n in (3, 4, 7)] == [1, 1, 3]
    assert [out_size(n, 3, 2, "same") for n in (3, 4, 7)] == [2, 2, 4]
    assert same_pad(8, 3, 2) == (0, 1) and same_pad(7, 3, 2) == (1, 1) and same_pad(5, 1, 1) == (0, 0)


@pytest.mark.parametrize("layers, shape, message", [
    ([{"type": "Conv2D", "filters": 4, "kernel_size": 5}, {"type": "Flatten"}], (1, 4, 9),
     "model.layers.0 (conv2d: Conv2D): kernel 5x5 is larger than its 4x9 input; use padding: same, a smaller "
     "kernel, fewer pooling layers, or a larger input"),
    ([{"type": "MaxPooling2D", "pool_size": 3}, {"type": "MaxPooling2D", "pool_size": 3}, {"type": "Flatten"}],
     (1, 8, 8), "model.layers.1 (max_pooling2d_1: MaxPooling2D): pool window 3x3 is larger than its 2x2 input; "
                "use padding: same, a smaller kernel, fewer pooling layers, or a larger input"),
    ([{"type": "Conv3D"}], (1, 8, 8), "unknown layer type in model.layers.0 'Conv3D'; valid: Activation, "
     "AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D, "
     "GlobalMaxPooling2D, MaxPooling2D"),
    ([{"type": "Flatten", "name": "x"}, {"type": "Dense", "units": 2, "name": "x"}], (1, 2, 2),
     "model.layers.1 (x: Dense): duplicate layer name 'x'"),
    ([{"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}, {"type": "Dense", "units": 2}],
     (1, 2, 2), "model.layers.1 (dense: Dense): softmax is only supported on the last layer (the model returns "
                "logits)"),
    ([{"type": "BatchNormalization", "center": "no"}, {"type": "Flatten"}], (1, 2, 2),
     "model.layers.0 (batch_normalization: BatchNormalization): center must be true or false, got 'no'"),
    ([], (1, 2, 2), "model.layers is empty; list at least one layer (e.g. {type: Dense, units: 10})"),
    ([{"type": "BatchNormalization", "momentum": "0.9"}, {"type": "Flatten"}], (1, 2, 2),
     "model.layers.0 (batch_normalization: BatchNormalization): momentum must be a number in [0, 1], got 0.9"),
    ([{"type": "BatchNormalization", "epsilon": 0}, {"type": "Flatten"}], (1, 2, 2),
     "model.layers.0 (batch_normalization: BatchNormalization): epsilon must be a number in (0, inf], got 0"),
    ([{"type": "Conv2D", "filters": 1, "kernel_size": [1, True]}, {"type": "Flatten"}], (1, 2, 2),
     "model.layers.0 (conv2d: Conv2D): kernel_size must be an integer or [h, w], got [1, True]"),
])
def test_mistakes_are_one_line_errors(layers, shape, message):
    with pytest.raises(CnnlabError) as caught:
        infer_spec(layers, input_shape=shape)
    assert str(caught.value) == message


def test_limits_are_checked_before_anything_is_built():
    vgg16 = [layer for width, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
             for layer in [*[{"type": "Conv2D", "filters": width, "kernel_size": 3, "padding": "same"}] * convs,
                           {"type": "MaxPooling2D"}]]
    vgg16 += [{"type": "Flatten"}, {"type": "Dense", "units": 4096}, {"type": "Dense", "units": 4096},
              {"type": "Dense", "units": 1000}]
    found = infer_spec(vgg16, input_shape=(3, 224, 224))  # within the limits: Keras's count for VGG-16
    assert sum(f.params for f in found) == 138_357_544 and found[0].out_shape == (64, 224, 224)
    no_pooling = [vgg16[0], {"type": "Flatten"}, {"type": "Dense", "units": 4096}]
    with pytest.raises(CnnlabError, match=r"^model.layers.2 \(dense: Dense\): the model reaches 13,153,343,232 "
                                          r"parameters here, over cnnlab's limit of 2,147,483,648 \(2\*\*31\)"):
        infer_spec(no_pooling, input_shape=(3, 224, 224))  # 64 * (27 + 1) + 4096 * (64 * 224 * 224 + 1)
    with pytest.raises(CnnlabError, match=r"^the input image of 1 x 8193 x 8192 has over 67,108,864 pixels"):
        infer_spec([{"type": "Flatten"}], input_shape=(1, 8193, 8192))
    with pytest.raises(CnnlabError, match=r"^the input image of 5 x 8192 x 8192 has over 268,435,456 values"):
        infer_spec([{"type": "Flatten"}], input_shape=(5, 8192, 8192))
    with pytest.raises(CnnlabError, match=r"^model.layers.0 \(conv2d: Conv2D\): its output \(6000, 224, 224\) holds "
                                          r"301,056,000 values per image, over cnnlab's limit of 268,435,456"):
        infer_spec([{**vgg16[0], "filters": 6000}, {"type": "Flatten"}], input_shape=(3, 224, 224))


def test_class_count_placeholder_and_mismatch():
    flat = [{"type": "Flatten"}, {"type": "Dense", "units": "num_classes"}]
    with pytest.raises(CnnlabError, match=r"units: num_classes needs the data's class count"):
        infer_spec(flat, input_shape=(1, 2, 2))
    with pytest.raises(CnnlabError, match="outputs 3 values but the data has 4 classes"):
        infer_spec([{"type": "Flatten"}, {"type": "Dense", "units": 3}], input_shape=(1, 2, 2), num_classes=4)


def test_sizing_a_layer_list_does_not_import_torch():
    code = ("import sys; from cnnlab.models.specshape import infer_spec; "
            "infer_spec([{'type': 'Flatten'}, {'type': 'Dense', 'units': 2}], input_shape=(1, 2, 2)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(("layer", "message"), [
    ({"type": "MaxPooling2D", "pool_size": 10**6, "padding": "same"}, "pool_size 1000000 is over 8192"),
    ({"type": "Conv2D", "filters": 2, "kernel_size": 1, "strides": 10**20}, "strides 100000000000000000000 is over 8192"),
    ({"type": "AveragePooling2D", "pool_size": [2, 9000], "padding": "same"}, "pool_size [2, 9000] is over 8192"),
])
def test_windows_and_strides_beyond_any_image_side_are_refused(layer, message):
    # Keras's rules would size these with same padding, but no kernel can run them (torch overflowed/allocated)
    with pytest.raises(CnnlabError, match=re.escape(message)):
        infer_spec([layer, {"type": "Flatten"}, {"type": "Dense", "units": 2}], input_shape=(1, 28, 28))


@pytest.mark.parametrize("kind", [["Conv2D"], {"a": 1}, 3, None])
def test_a_layer_type_that_is_not_a_name_is_an_unknown_type(kind):
    with pytest.raises(CnnlabError, match=r"unknown layer type in model.layers.0 .*; valid: Activation"):
        infer_spec([{"type": kind, "filters": 2, "kernel_size": 3}], input_shape=(1, 28, 28))
