"""ResNet 18/34/50/101/152: torchvision's layout and counts, grey and small inputs, zero-init residuals.

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
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.resnet")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def test_the_family_is_resnet():
    assert ARCHS == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch)
    assert n_params(model) == expected


def test_resnet18_trains_on_grayscale_32px():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, input_shape=(1, 32, 32))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([3, 7])).backward()
    assert model.conv1.weight.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "shape"), [("resnet50", (3, 40, 24))])  # non-square
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_user_mistakes_are_one_line_errors(build_meta):
    with pytest.raises(CnnlabError, match=r"resnet18: unknown option\(s\) depth; valid: zero_init_residual"):
        build_meta("resnet18", depth=50)


def test_builder_options_reach_the_model():
    model = create_model("resnet18", num_classes=2, input_shape=(3, 32, 32), zero_init_residual=True)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert all(b.bn2.weight.abs().sum() == 0 for b in blocks)  # every block starts as an identity
    assert model.bn1.weight.eq(1).all()
