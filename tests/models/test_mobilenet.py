"""MobileNet v2: torchvision's layout and count, the width multiplier, small inputs.

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
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.mobilenet")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {"mobilenet_v2": 3_504_872}


def test_the_family_is_mobilenet():
    assert ARCHS == ["mobilenet_v2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch)
    assert n_params(model) == expected


@pytest.mark.parametrize(("arch", "shape"), [("mobilenet_v2", (3, 64, 64))])
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_user_mistakes_are_one_line_errors(build_meta):
    with pytest.raises(CnnlabError, match=r"`input_shape` must be \(channels, height, width\) of positive sizes"):
        build_meta("mobilenet_v2", input_shape=(224, 224))


def test_builder_options_reach_the_model(build_meta):
    assert build_meta("mobilenet_v2", width_mult=0.5).features[0][0].out_channels == 16
