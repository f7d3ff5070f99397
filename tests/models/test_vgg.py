"""VGG (11/13/16/19, with and without BatchNorm): torchvision's layout, Keras's counts at 50px, forward passes.

Layout and counting tests build on the meta device (no memory, no compute); forward passes use small
inputs and batches so the file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import MODELS, create_model, model_names

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = json.loads(Path(__file__).with_name("torchvision_keys.json").read_text())
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.vgg")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
}


def test_the_family_is_vgg():
    assert ARCHS == ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch)
    assert n_params(model) == expected


@pytest.mark.parametrize(("arch", "expected"), [("vgg16", 33_605_442), ("vgg19", 38_915_138)])
def test_vgg_at_50px_has_keras_parameter_count(arch, expected, build_meta, n_params):
    model = build_meta(arch, num_classes=2, input_shape=(3, 50, 50))
    assert n_params(model) == expected
    assert model.classifier[0].in_features == 512  # 50 → 25 → 12 → 6 → 3 → 1: a 512x1x1 map, flattened


def test_vgg_flatten_width_follows_input_size(build_meta):
    assert build_meta("vgg11").classifier[0].in_features == 512 * 7 * 7
    assert build_meta("vgg11", input_shape=(3, 96, 64)).classifier[0].in_features == 512 * 3 * 2


def test_vgg16_at_50px_trains_on_two_classes():
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=2, input_shape=(3, 50, 50))
    out = model(torch.randn(2, 3, 50, 50))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert model.features[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "shape"), [("vgg11_bn", (3, 32, 32))])
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "min_side"), [("vgg16", 32)])
def test_too_small_input_names_model_and_minimum(arch, min_side, build_meta):
    with pytest.raises(CnnlabError, match=rf"{arch} needs inputs of at least {min_side}x{min_side}"):
        create_model(arch, num_classes=2, input_shape=(3, min_side - 1, min_side - 1))
    with pytest.raises(CnnlabError, match=rf"got 224x{min_side - 1}"):  # one short side is enough
        create_model(arch, num_classes=2, input_shape=(3, 224, min_side - 1))
    build_meta(arch, num_classes=2, input_shape=(3, min_side, min_side))  # the minimum itself is fine


def test_builder_options_reach_the_model(build_meta):
    assert build_meta("vgg16", dropout=0.3).classifier[2].p == 0.3
