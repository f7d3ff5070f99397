"""The classic deep CNNs: torchvision's layouts, pinned parameter counts, input sizes, forward passes.

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
from cnnlab.models import MODELS, create_model, describe, model_meta, model_names

FIXTURE = json.loads(Path(__file__).with_name("torchvision_keys.json").read_text())
ARCHS = sorted(k for k in FIXTURE if not k.startswith("_"))
CLASSIC_MODULES = {f"cnnlab.models.{m}"
                   for m in ("vgg", "resnet", "googlenet", "inception", "mobilenet", "alexnet")}
AUX = {"googlenet", "inception_v3"}

# num_params of torchvision's ImageNet weights (docs pages / Weights.meta), 1000 classes. torchvision counts
# googlenet without its auxiliary heads (it removes them after loading) and inception_v3 with its one.
TORCHVISION_PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg11_bn": 132_868_840, "vgg13": 133_047_848, "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544, "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "googlenet": 6_624_904,
    "inception_v3": 27_161_264,
    "mobilenet_v2": 3_504_872,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small convs on busy shared cores: one intra-op thread avoids OpenMP spin-waits (30x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_meta(arch: str, **kw) -> nn.Module:
    """Builds ``arch`` on the meta device: shapes only, no memory, no init cost."""
    size = 299 if arch == "inception_v3" else 224
    kw.setdefault("num_classes", 1000)
    kw.setdefault("input_shape", (3, size, size))
    with torch.device("meta"):
        return create_model(arch, **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_fixture_covers_every_classic_builder():
    classic = {n for n in model_names() if MODELS.get(n).builder.__module__ in CLASSIC_MODULES}
    assert classic == set(ARCHS)
    assert {"vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "googlenet", "inception_v3", "mobilenet_v2",
            "alexnet"} <= classic


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keys_and_shapes_equal_torchvision(arch):
    model = build_meta(arch, **({"aux_logits": True} if arch in AUX else {}))
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == FIXTURE[arch]  # same keys, same order, same shapes, BN buffers included


@pytest.mark.parametrize(("arch", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_parameter_count_equals_torchvision_docs(arch, expected):
    model = build_meta(arch, **({"aux_logits": True} if arch == "inception_v3" else {}))
    assert n_params(model) == expected


def test_auxiliary_heads_add_torchvisions_sizes():
    # Counts of torchvision's own classes with the other aux setting (GoogLeNet's two heads hold 6.4M).
    assert n_params(build_meta("googlenet", aux_logits=True)) == 13_004_888
    assert n_params(build_meta("inception_v3")) == 23_834_568


@pytest.mark.parametrize(("arch", "expected"), [("vgg16", 33_605_442), ("vgg19", 38_915_138)])
def test_vgg_at_50px_has_keras_parameter_count(arch, expected):
    model = build_meta(arch, num_classes=2, input_shape=(3, 50, 50))
    assert n_params(model) == expected
    assert model.classifier[0].in_features == 512  # 50 → 25 → 12 → 6 → 3 → 1: a 512x1x1 map, flattened


def test_vgg_flatten_width_follows_input_size():
    assert build_meta("vgg11").classifier[0].in_features == 512 * 7 * 7
    assert build_meta("vgg11", input_shape=(3, 96, 64)).classifier[0].in_features == 512 * 3 * 2


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_names_the_head_first_conv_and_aux_heads(arch):
    model = build_meta(arch, num_classes=7, **({"aux_logits": True} if arch in AUX else {}))
    meta = model_meta(arch)
    head = model.get_submodule(meta.head)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    main_linears = [n for n, m in model.named_modules()
                    if isinstance(m, nn.Linear) and not n.startswith(("aux", "AuxLogits"))]
    assert main_linears[-1] == meta.head
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert meta.first_conv == first_conv  # the metadata names the stem the gray-input adaptation sums
    assert all(k.startswith(meta.aux_heads) for k in model.state_dict() if k.startswith(("aux", "AuxLogits")))
    assert describe(arch) and "\n" not in describe(arch)


def test_vgg16_at_50px_trains_on_two_classes():
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=2, input_shape=(3, 50, 50))
    out = model(torch.randn(2, 3, 50, 50))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert model.features[0].weight.grad.abs().sum() > 0


def test_resnet18_trains_on_grayscale_32px():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, input_shape=(1, 32, 32))
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([3, 7])).backward()
    assert model.conv1.weight.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "shape"), [
    ("mobilenet_v2", (3, 64, 64)),
    ("resnet50", (3, 40, 24)),  # non-square
    ("googlenet", (3, 15, 15)),  # the smallest input it takes
    ("alexnet", (3, 63, 63)),
    ("vgg11_bn", (3, 32, 32)),
])
def test_small_inputs_give_logits(arch, shape):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *shape))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "size"), [("googlenet", 15), ("inception_v3", 75)])  # the minimum sizes
def test_aux_heads_exist_but_forward_returns_only_main_logits(arch, size):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, input_shape=(3, size, size), aux_logits=True).train()
    aux = [m for n, m in model.named_children() if n.startswith(("aux", "AuxLogits"))]
    assert len(aux) == (2 if arch == "googlenet" else 1)
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


@pytest.mark.parametrize(("arch", "min_side"), [("vgg16", 32), ("googlenet", 15), ("inception_v3", 75),
                                                ("alexnet", 63)])
def test_too_small_input_names_model_and_minimum(arch, min_side):
    with pytest.raises(CnnlabError, match=rf"{arch} needs inputs of at least {min_side}x{min_side}"):
        create_model(arch, num_classes=2, input_shape=(3, min_side - 1, min_side - 1))
    with pytest.raises(CnnlabError, match=rf"got 224x{min_side - 1}"):  # one short side is enough
        create_model(arch, num_classes=2, input_shape=(3, 224, min_side - 1))
    build_meta(arch, num_classes=2, input_shape=(3, min_side, min_side))  # the minimum itself is fine


def test_user_mistakes_are_one_line_errors():
    with pytest.raises(CnnlabError, match=r"resnet18: unknown option\(s\) depth; valid: zero_init_residual"):
        build_meta("resnet18", depth=50)
    with pytest.raises(CnnlabError, match=r"transform_input re-scales RGB input"):
        build_meta("inception_v3", input_shape=(1, 299, 299), transform_input=True)
    with pytest.raises(CnnlabError, match=r"input_shape must be \(channels, height, width\)"):
        build_meta("mobilenet_v2", input_shape=(224, 224))
    with pytest.raises(CnnlabError, match=r"sizes must be ≥ 1"):
        build_meta("alexnet", input_shape=(0, 224, 224))


def test_builder_options_reach_the_model():
    assert build_meta("vgg16", dropout=0.3).classifier[2].p == 0.3
    assert build_meta("mobilenet_v2", width_mult=0.5).features[0][0].out_channels == 16
    model = create_model("resnet18", num_classes=2, input_shape=(3, 32, 32), zero_init_residual=True)
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert all(b.bn2.weight.abs().sum() == 0 for b in blocks)  # every block starts as an identity
    assert model.bn1.weight.eq(1).all()
