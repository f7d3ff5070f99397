"""Inception v3: torchvision's layout and count, the auxiliary head, the smallest input.

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
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.inception")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {"inception_v3": 27_161_264}  # torchvision counts inception_v3 with its auxiliary head


def test_the_family_is_inception():
    assert ARCHS == ["inception_v3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch, aux_logits=True)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch, aux_logits=True)
    assert n_params(model) == expected


def test_auxiliary_heads_add_torchvisions_sizes(build_meta, n_params):
    # The count of torchvision's own class with the other aux setting.
    assert n_params(build_meta("inception_v3")) == 23_834_568


@pytest.mark.parametrize(("arch", "size"), [("inception_v3", 75)])  # the minimum size
def test_aux_heads_exist_but_forward_returns_only_main_logits(arch, size):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, input_shape=(3, size, size), aux_logits=True).train()
    aux = [m for n, m in model.named_children() if n.startswith(("aux", "AuxLogits"))]
    assert len(aux) == 1
    calls = []
    for m in aux:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)  # not torchvision's (logits, aux) tuple
    assert calls == []  # aux heads never run, so they take no part in the loss


@pytest.mark.parametrize(("arch", "min_side"), [("inception_v3", 75)])
def test_too_small_input_names_model_and_minimum(arch, min_side, build_meta):
    with pytest.raises(CnnlabError, match=rf"{arch} needs inputs of at least {min_side}x{min_side}"):
        create_model(arch, num_classes=2, input_shape=(3, min_side - 1, min_side - 1))
    with pytest.raises(CnnlabError, match=rf"got 224x{min_side - 1}"):  # one short side is enough
        create_model(arch, num_classes=2, input_shape=(3, 224, min_side - 1))
    build_meta(arch, num_classes=2, input_shape=(3, min_side, min_side))  # the minimum itself is fine


def test_user_mistakes_are_one_line_errors(build_meta):
    with pytest.raises(CnnlabError, match=r"transform_input re-scales RGB input"):
        build_meta("inception_v3", input_shape=(1, 299, 299), transform_input=True)
