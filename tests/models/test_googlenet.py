"""GoogLeNet: torchvision's layout and count, auxiliary heads, TensorFlow-style input transform.

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
ARCHS = sorted(k for k in KEYS if k in model_names() and MODELS.get(k).builder.__module__ == "cnnlab.models.googlenet")
# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes.
TORCHVISION_PARAMS = {"googlenet": 6_624_904}  # torchvision counts googlenet without its auxiliary heads


def test_the_family_is_googlenet():
    assert ARCHS == ["googlenet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch, build_meta, torchvision_keys):
    model = build_meta(arch, aux_logits=True)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == torchvision_keys[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected, build_meta, n_params):
    model = build_meta(arch)
    assert n_params(model) == expected


def test_auxiliary_heads_add_torchvisions_sizes(build_meta, n_params):
    # The count of torchvision's own class with the other aux setting (GoogLeNet's two heads hold 6.4M).
    assert n_params(build_meta("googlenet", aux_logits=True)) == 13_004_888


@pytest.mark.parametrize(("arch", "shape"), [("googlenet", (3, 15, 15))])  # the smallest input it takes
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "size"), [("googlenet", 15)])  # the minimum size
def test_aux_heads_exist_but_forward_returns_only_main_logits(arch, size):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, input_shape=(3, size, size), aux_logits=True).train()
    aux = [m for n, m in model.named_children() if n.startswith(("aux", "AuxLogits"))]
    assert len(aux) == 2
    calls = []
    for m in aux:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)  # not torchvision's (logits, aux) tuple
    assert calls == []  # aux heads never run, so they take no part in the loss


def test_transform_input_rescales_imagenet_normalised_rgb():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=5, input_shape=(3, 15, 15), transform_input=True).eval()
    x = torch.randn(2, 3, 15, 15)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = x * std + mean  # undo ImageNet normalisation → 0..1 pixels
    with torch.no_grad():
        mapped = model(x)
        model.transform_input = False
        plain = model((pixels - 0.5) / 0.5)  # the [-1, 1] scaling the TensorFlow weights expect
    torch.testing.assert_close(mapped, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("arch", "min_side"), [("googlenet", 15)])
def test_too_small_input_names_model_and_minimum(arch, min_side, build_meta):
    with pytest.raises(CnnlabError, match=rf"{arch} needs inputs of at least {min_side}x{min_side}"):
        create_model(arch, num_classes=2, input_shape=(3, min_side - 1, min_side - 1))
    with pytest.raises(CnnlabError, match=rf"got 224x{min_side - 1}"):  # one short side is enough
        create_model(arch, num_classes=2, input_shape=(3, 224, min_side - 1))
    build_meta(arch, num_classes=2, input_shape=(3, min_side, min_side))  # the minimum itself is fine
