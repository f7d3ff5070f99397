"""``summary``: a layer list's table without building the model, equal to the traced table; the rest traced."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import cnnlab.models.summary as summary_module
from cnnlab.app.summary import config_input, registered_names, summary
from cnnlab.config import PACKAGED, load_config
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, model_meta, model_names
from cnnlab.models.build import build_model
from cnnlab.models.seeds import SEED_SPECS
from cnnlab.models.spec import build_spec

# every packaged config whose model is a layer list or a tutorial model, i.e. all but the VGG-16 one
CONFIGS = sorted(str(p.relative_to(PACKAGED).with_suffix("")) for p in PACKAGED.rglob("*.yaml")
                 if (lambda m: m.layers or m.name in SEED_SPECS)(load_config(p).model))
TRACED = summary_module.summary_text  # the traced table, kept before a test takes it away
LAYERS = "- {type: Conv2D, filters: 8, kernel_size: 3, padding: same}\n- {type: BatchNormalization}\n" \
         "- {type: MaxPooling2D}\n- {type: Flatten}\n- {type: Dense, units: num_classes, activation: softmax}\n"


@pytest.fixture
def untraced(monkeypatch):
    """Fails a test that builds and traces a model: what it summarises must take the path without torch."""
    def refuse(*args, **kwargs):
        raise AssertionError("traced")

    monkeypatch.setattr(summary_module, "summary_text", refuse)


def test_the_packaged_configs_cover_both_kinds():
    assert "fashion_mnist_cnn" in CONFIGS and "fast/cifar-10" in CONFIGS and "cats_dogs_vgg16" not in CONFIGS
    assert registered_names() == model_names()


@pytest.mark.parametrize("name", sorted(SEED_SPECS))
def test_every_tutorial_model_equals_its_trace(name, untraced):
    c = SEED_SPECS[name].input_shape[0]
    for shape, classes in ((None, None), ((c, 36, 44), 5)):
        fast = summary(name, input_shape=shape, num_classes=classes)
        built_shape = shape or model_meta(name).input_shape
        model = create_model(name, num_classes=classes or 10, input_shape=built_shape)
        assert fast == TRACED(model, built_shape, title=name)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_packaged_layer_list_config_equals_its_trace(config, untraced):
    cfg = load_config(PACKAGED / f"{config}.yaml")
    for given in (None, (3, 40, 40)):
        fast = summary(config, input_shape=given)
        shape, classes = config_input(cfg, given, None)
        model = build_model(cfg.model, input_shape=shape, num_classes=classes)
        assert fast == TRACED(model, shape, title=cfg.name or config.rsplit("/", 1)[-1])


def test_a_yaml_layer_list_and_a_config_file(tmp_path, untraced):
    listed = tmp_path / "net.yaml"
    listed.write_text(LAYERS)
    config = tmp_path / "exp.yaml"
    config.write_text("name: mine\ndata: {dataset: cifar-10}\nmodel:\n  layers:\n"
                      + "".join(f"    {line}\n" for line in LAYERS.splitlines()))
    fast = [summary(listed, input_shape=(1, 28, 28), num_classes=4), summary(str(config))]
    expected = []
    for layers, shape, classes, title in ((listed, (1, 28, 28), 4, "net"), (config, (3, 32, 32), 10, "mine")):
        cfg = load_config(layers) if layers == config else load_config(None, [("model.layers", _yaml(layers))])
        model = build_spec(list(cfg.model.layers), input_shape=shape, num_classes=classes)
        expected.append(TRACED(model, shape, title=title))
    assert fast == expected
    assert fast[1].splitlines()[0] == 'Model: "mine"' and "Non-trainable params: 16" in fast[1]  # BN's statistics


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("bad, shape", [
    ("- {type: Conv3D, filters: 8}\n", (1, 28, 28)),  # a bad layer
    ("- {type: Conv2D, filters: 8, kernel_size: 3}\n- {type: MaxPooling2D}\n- {type: Conv2D, filters: 8, "
     "kernel_size: 15}\n- {type: Flatten}\n- {type: Dense, units: 10}\n", (1, 28, 28)),  # 13x13: no 15x15 kernel
    ("- {type: Flatten}\n- {type: Dense, units: 3}\n", (1, 28, 28)),  # 3 outputs for 10 classes
])
def test_mistakes_are_the_same_one_line_errors_on_both_paths(bad, shape, tmp_path, untraced):
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(CnnlabError) as fast:
        summary(path, input_shape=shape)
    with pytest.raises(CnnlabError) as built:
        build_spec(_yaml(path), input_shape=shape, num_classes=10)
    assert str(fast.value) == str(built.value) and "\n" not in str(fast.value)


def test_a_tutorial_model_checks_its_input_as_create_model_does(untraced):
    with pytest.raises(CnnlabError, match=r"^cnn_64x2: `input_shape` is \(C, H, W\), channels first; "):
        summary("cnn_64x2", input_shape=(28, 28, 1))
    with pytest.raises(CnnlabError, match=r"^unknown model 'cnn_64'; valid: alexnet, cifar_basic, "):
        summary("cnn_64")


def test_the_rest_is_traced(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(summary_module, "summary_text", lambda *a, **k: calls.append(k["title"]) or TRACED(*a, **k))
    assert "Total params: 11,188,677" in summary("resnet18", input_shape=(3, 32, 32), num_classes=5)
    flat = tmp_path / "flat.yaml"
    flat.write_text("- {type: Dense, units: 4}\n")
    # a layer list at an input that is not (C, H, W) is built and traced, as before
    assert "dense (Dense)" in summary(flat, input_shape=(12,), num_classes=4)
    assert calls == ["resnet18", "flat"]


def test_a_tutorial_model_is_summarised_without_importing_torch():
    code = ("import sys; from cnnlab.app.summary import summary; "
            "text = summary('fashion_mnist_cnn'); print(text.splitlines()[-3], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "Trainable params: 243,786 False"


@pytest.mark.parametrize("text", ["", "{}", "[]", "null\n"])
def test_a_file_without_a_model_is_refused_not_summarised_as_the_default(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(CnnlabError, match="empty.yaml holds no config and no layer list"):
        summary(path)


def test_an_empty_layer_list_is_refused_on_both_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {layers: []}\n")
    with pytest.raises(CnnlabError, match=r"^model.layers is empty; list at least one layer"):
        summary(path)
    with pytest.raises(CnnlabError, match=r"^model.layers is empty"):  # training would have built cnn_64x2
        build_model(load_config(path).model, input_shape=(1, 28, 28), num_classes=10)


@pytest.mark.parametrize(("shape", "message"), [
    ("1,28,28", "must be positive whole sizes"), ((1.5, 28, 28), "must be positive whole sizes"),
    ((1, -28, 28), "must be positive whole sizes"), ((0, 28, 28), "must be positive whole sizes"),
    ((28, 28, 1), "looks like Keras's (H, W, C): use (1, 28, 28)"),
    ((1, 9000, 9000), "has over 67,108,864 pixels"),
])
def test_a_layer_list_checks_its_input_shape_as_a_registered_model_does(tmp_path, shape, message):
    path = tmp_path / "l.yaml"
    path.write_text("- {type: Conv2D, filters: 2, kernel_size: 3}\n- {type: Flatten}\n- {type: Dense, units: 10}\n")
    with pytest.raises(CnnlabError, match=re.escape(message)):
        summary(path, input_shape=shape)


def test_a_classic_family_refuses_an_input_over_the_pixel_limit_before_building():
    with pytest.raises(CnnlabError, match=r"resnet18: `input_shape` \(3, 99999999999, 99999999999\) has over"):
        summary("resnet18", input_shape=(3, 99999999999, 99999999999))
