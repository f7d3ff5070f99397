"""The model registry: every family registered with its metadata; names, descriptions, builder checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models import (
    MODELS,
    ModelMeta,
    Weights,
    create_model,
    describe,
    model_meta,
    model_names,
    register_model,
)
from cnnlab.models.registry import (
    check_build_args,
    check_input,
    first_line,
    reject_options,
    torchvision_weights,
)

KEYS = json.loads(Path(__file__).with_name("torchvision_keys.json").read_text())
ARCHS = sorted(k for k in KEYS if not k.startswith("_"))
CLASSIC_MODULES = {f"cnnlab.models.{m}"
                   for m in ("vgg", "resnet", "googlenet", "inception", "mobilenet", "alexnet")}
AUX = {"googlenet", "inception_v3"}


def test_fixture_covers_every_classic_builder():
    classic = {n for n in model_names() if MODELS.get(n).builder.__module__ in CLASSIC_MODULES}
    assert classic == set(ARCHS)
    assert {"vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "googlenet", "inception_v3", "mobilenet_v2",
            "alexnet"} <= classic


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_names_the_head_first_conv_and_aux_heads(arch, build_meta):
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


def test_names_descriptions_and_unknown_models():
    names = model_names()
    assert names == sorted(names) and {"cnn_64x2", "dnn_128", "resnet18", "vgg16"} <= set(names)
    assert describe("dnn_128") == "Tutorial 1 DNN: Flatten-Dense128-Dense10 (Fashion-MNIST)"
    with pytest.raises(CnnlabError, match="unknown model 'resnet9000'; valid: alexnet, cifar_basic"):
        create_model("resnet9000", num_classes=2, input_shape=(1, 28, 28))
    with pytest.raises(CnnlabError, match="unknown model 'nope'"):
        model_meta("nope")
    assert first_line(None) == first_line("  \n ") == "" and first_line("\n  One.\n\n  More.\n  ") == "One."


def test_register_model_keeps_the_builder_and_its_metadata(monkeypatch):
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))  # the registry is restored afterwards
    meta = ModelMeta((1, 4, 4), num_classes=2, head="fc")

    @register_model(meta, name="tiny_test_model")
    def builder(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        """A tiny test model.

        More text that is not the description.
        """
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[1] * input_shape[2], num_classes))

    assert model_meta("tiny_test_model") is meta and describe("tiny_test_model") == "A tiny test model."
    model = create_model("tiny_test_model", num_classes=3, input_shape=[1, 4, 4])  # any sequence: a tuple
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="model 'tiny_test_model' is already registered"):
        register_model(meta, name="tiny_test_model")(builder)


def test_weights_metadata():
    w = torchvision_weights("resnet18-f37072fd.pth", input_size=224)
    assert (w.url, w.sha256, w.file_name) == ("https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                              "f37072fd", "resnet18-f37072fd.pth")
    assert w.builder_options == {} and Weights("u/x-1.pth", "1", transform_input=True).builder_options == {
        "transform_input": True}
    assert ModelMeta((3, 224, 224), weights=w).mean == (0.485, 0.456, 0.406)
    assert ModelMeta((1, 28, 28)).mean is None and ModelMeta((1, 28, 28)).std is None


def test_builder_checks():
    assert check_input("m", [3, 32.0, 30], min_side=30) == (3, 32, 30)
    with pytest.raises(CnnlabError, match=r"m: input_shape must be \(channels, height, width\), got \(3, 32\)"):
        check_input("m", (3, 32))
    with pytest.raises(CnnlabError, match="m needs inputs of at least 30x30 pixels, got 29x40; resize"):
        check_input("m", (3, 29, 40), min_side=30)
    reject_options("m", {}, ["a"])
    with pytest.raises(CnnlabError, match=r"m: unknown option\(s\) x, y; valid: none"):
        reject_options("m", {"y": 1, "x": 2}, [])


def test_create_model_checks_its_arguments_in_one_line():
    from cnnlab.errors import CnnlabError
    from cnnlab.models.registry import create_model as create

    with pytest.raises(CnnlabError, match=r"cnn_64x2: unknown option \(got an unexpected keyword argument 'bogus'\)"):
        create("cnn_64x2", num_classes=10, input_shape=(1, 28, 28), bogus=1)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(CnnlabError, match=r"`num_classes` must be a whole number ≥ 1"):
            create("cnn_64x2", num_classes=bad, input_shape=(1, 28, 28))
    with pytest.raises(CnnlabError, match=r"`input_shape` is \(C, H, W\), channels first; \(32, 32, 3\) looks like "
                                          r"Keras's \(H, W, C\): use \(3, 32, 32\)"):
        create("resnet18", num_classes=10, input_shape=(32, 32, 3))
    with pytest.raises(CnnlabError, match=r"`input_shape` must be \(channels, height, width\) of positive sizes"):
        create("resnet18", num_classes=10, input_shape=(3, 0, 32))


def test_classic_models_declare_their_adam_rate():
    from cnnlab.models.registry import LR_WITH_BN, LR_WITHOUT_BN, model_meta, model_names

    classics = [n for n in model_names() if model_meta(n).weights is not None]
    assert len(classics) == 17
    for name in classics:
        without_bn = name.startswith("vgg") and not name.endswith("_bn") or name == "alexnet"
        assert model_meta(name).lr == (LR_WITHOUT_BN if without_bn else LR_WITH_BN), name
    assert (LR_WITH_BN, LR_WITHOUT_BN) == (1e-3, 1e-4)
    assert model_meta("cnn_64x2").lr is None  # the tutorials' models: train.lr's generic default


def test_build_arguments_are_checked_before_anything_is_built():
    assert check_build_args("m", 3, [1, 28, 28]) == (1, 28, 28)
    with pytest.raises(CnnlabError) as caught:
        check_build_args("m", 10, (28, 28, 1))
    assert str(caught.value) == ("m: `input_shape` is (C, H, W), channels first; (28, 28, 1) looks like Keras's "
                                 "(H, W, C): use (1, 28, 28)")
    with pytest.raises(CnnlabError, match=r"^m: `num_classes` must be a whole number ≥ 1, got True$"):
        check_build_args("m", True, (1, 2, 2))
