"""AlexNet: torchvision's layout and count, the smallest input, input checks.

Layout and counting tests build on the meta device (no memory, no compute); forward passes use small
inputs and batches so the file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models import MODELS, create_model, model_names

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = json.loads(Path(__file__).with_name("torchvision_keys.json").read_text())
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.alexnet")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {"alexnet": 61_100_840}


def test_the_family_is_alexnet():
    assert ARCHS == ["alexnet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch)
    assert n_params(model) == expected


@pytest.mark.parametrize(("arch", "shape"), [("alexnet", (3, 63, 63))])
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "min_side"), [("alexnet", 63)])
def test_too_small_input_names_model_and_minimum(arch, min_side, build_meta):
    with pytest.raises(CnnlabError, match=rf"{arch} needs inputs of at least {min_side}x{min_side}"):
        create_model(arch, num_classes=2, input_shape=(3, min_side - 1, min_side - 1))
    with pytest.raises(CnnlabError, match=rf"got 224x{min_side - 1}"):  # one short side is enough
        create_model(arch, num_classes=2, input_shape=(3, 224, min_side - 1))
    build_meta(arch, num_classes=2, input_shape=(3, min_side, min_side))  # the minimum itself is fine


def test_user_mistakes_are_one_line_errors(build_meta):
    with pytest.raises(CnnlabError, match=r"`input_shape` must be \(channels, height, width\) of positive sizes, got \(0, 224, 224\)"):
        build_meta("alexnet", input_shape=(0, 224, 224))
