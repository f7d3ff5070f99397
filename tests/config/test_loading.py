"""Building a config: defaults, typed overrides, YAML files and packaged configs by name, recipes."""

import re
from pathlib import Path

import pytest

from cnnlab.config import (
    Config,
    apply_override,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    parse_value,
    read_yaml,
    replace,
    to_dict,
)
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import experiment_config, layer_lists

ROOT = Path(__file__).resolve().parents[2]


def sets(*items: str) -> list:
    return [parse_override(i) for i in items]


def test_defaults_and_overrides():
    cfg = load_config(None, sets("train.epochs=10", "train.lr=0.01", "data.dataset=mnist", "callbacks.stop_at=[val_acc=0.9]"), layer_lists=layer_lists)
    assert cfg.train.epochs == 10 and cfg.train.lr == 0.01
    assert cfg.data.dataset == "mnist"
    assert cfg.callbacks.stop_at == ("val_acc=0.9",)
    assert cfg.model.name == "cnn_64x2"


def test_int_accepted_for_float_but_not_reverse():
    assert load_config(None, sets("train.lr=1"), layer_lists=layer_lists).train.lr == 1.0
    with pytest.raises(CnnlabError, match="`train.epochs` expects an integer, got 'ten'"):
        load_config(None, sets("train.epochs=ten"), layer_lists=layer_lists)
    with pytest.raises(CnnlabError, match="`train.channels_last` expects true or false"):
        load_config(None, sets("train.channels_last=3"), layer_lists=layer_lists)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.lr", float("nan"), "`train.lr` expects a finite number, got nan"),
    ("train.lr", float("inf"), "`train.lr` expects a finite number, got inf"),
    ("train.lr", "fast", "`train.lr` expects a number, got 'fast'"),
    ("train.epochs", "ten", "`train.epochs` expects an integer, got 'ten'"),
    ("train.sync_bn", 3, "`train.sync_bn` expects true or false, got 3"),
    ("data.dataset", 7, "`data.dataset` expects a string, got 7"),
    ("model.layers", 7, "`model.layers` expects a list, got 7"),
    ("train.precision", "fp8", "`train.precision`: 'fp8' is not one of auto"),
])
def test_type_and_choice_errors_name_the_key_in_backticks(key, value, message):
    # the CLI turns a backticked key into the flag the user typed (`train.lr` → --lr); a bare key stays bare
    with pytest.raises(CnnlabError) as info:
        load_config(None, [(key, value)], layer_lists=layer_lists)
    assert str(info.value).startswith(message)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(CnnlabError, match=r"unknown config key 'train.epoch'.*valid keys in train: epochs"):
        load_config(None, sets("train.epoch=3"), layer_lists=layer_lists)
    with pytest.raises(CnnlabError, match="unknown config key 'trian'"):
        from_dict(Config, {"trian": {}}, "")


def test_set_edits_a_named_models_layers():
    cfg = load_config(None, sets("model.layers.0.filters=32"), layer_lists=layer_lists)
    assert cfg.model.layers[0]["filters"] == 32
    assert cfg.model.layers[-1]["units"] == "num_classes"
    with pytest.raises(CnnlabError, match="index 99 out of range"):
        load_config(None, sets("model.layers.99.filters=32"), layer_lists=layer_lists)


def test_set_needs_key_value():
    with pytest.raises(CnnlabError, match="expected KEY=VALUE"):
        parse_override("train.epochs")


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, sets("model.layers.2.filters=16", "data.augment.hflip=true", "train.tta=hflip"), layer_lists=layer_lists)
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_bad_yaml_files(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(CnnlabError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(CnnlabError, match="must hold a mapping"):
        read_yaml(lst)


def test_packaged_config_by_name_is_the_file():
    cfg = experiment_config("fashion_mnist_cnn")
    assert cfg == load_config(ROOT / "configs" / "fashion_mnist_cnn.yaml")
    assert cfg.model.name == "cnn_64x2" and cfg.data.dataset == "fashion-mnist"


def test_configs_by_name_and_recipes(tmp_path, monkeypatch):
    from cnnlab.config import config_path, recipe_path

    assert config_path("fashion_mnist_cnn").name == "fashion_mnist_cnn.yaml"
    assert config_path("exercises/filters").parent.name == "exercises"
    with pytest.raises(CnnlabError, match="config file nope not found; pass an existing YAML file or a packaged"):
        config_path("nope")
    (tmp_path / "mine").mkdir()
    with pytest.raises(CnnlabError, match=r"^config .*/mine is a folder; pass a YAML file in it or a packaged"):
        config_path(tmp_path / "mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {name: dnn_128}\n")
    with pytest.raises(CnnlabError, match=r"^config .*/run is a run directory; pass its config.yaml \(.*/run/config.yaml\)"):
        config_path(tmp_path / "run")
    (tmp_path / "fashion_mnist_cnn").mkdir()  # a folder named like a packaged config: the packaged one wins
    monkeypatch.chdir(tmp_path)
    assert config_path("fashion_mnist_cnn").parent.name == "configs"
    with pytest.raises(CnnlabError, match="unknown recipe 'slow'"):
        recipe_path("slow", "mnist")
    for dataset in ("mnist", "fashion-mnist", "cifar-10"):
        assert load_config(recipe_path("fast", dataset)).data.dataset == dataset
    with pytest.raises(CnnlabError, match="recipe 'fast' has no config for dataset 'svhn'; it has: cifar-10"):
        recipe_path("fast", "svhn")


def test_a_recipe_written_for_a_model_is_chosen_for_that_model_only(tmp_path, monkeypatch):
    import cnnlab.config.loading as loading
    from cnnlab.config import recipe_path

    (tmp_path / "fast").mkdir()
    (tmp_path / "fast" / "fashion-mnist.yaml").write_text("data: {dataset: fashion-mnist}\nmodel: {name: cnn_32_64}\n")
    (tmp_path / "fast" / "fashion-mnist-tutorial.yaml").write_text("data: {dataset: fashion-mnist}\n"
                                                                   "model: {name: cnn_64x2}\n")
    (tmp_path / "fast" / "mnist.yaml").write_text("data: {dataset: mnist}\nmodel: {name: cnn_64x2}\n")
    monkeypatch.setattr(loading, "PACKAGED", tmp_path)
    assert recipe_path("fast", "fashion-mnist", "cnn_64x2").name == "fashion-mnist-tutorial.yaml"
    assert recipe_path("fast", "fashion-mnist", "dnn_128").name == "fashion-mnist.yaml"  # none for it: the dataset's
    assert recipe_path("fast", "fashion-mnist").name == "fashion-mnist.yaml"
    assert recipe_path("fast", "mnist", "cnn_64x2").name == "mnist.yaml"  # the dataset must match too


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_builds(path):
    from cnnlab.data.datasets import DATASETS
    from cnnlab.models.build import build_model

    cfg = load_config(path)
    if cfg.data.dataset in DATASETS:
        info = DATASETS.get(cfg.data.dataset)
        model = build_model(cfg.model, input_shape=info.shape, num_classes=len(info.classes))
        assert sum(p.numel() for p in model.parameters()) > 0


def test_exponent_floats_without_a_dot():
    assert load_config(None, sets("train.lr=1e-5"), layer_lists=layer_lists).train.lr == 1e-5
    with pytest.raises(CnnlabError, match="`train.lr` expects a number, got 'fast'"):
        load_config(None, sets("train.lr=fast"), layer_lists=layer_lists)


def test_values_read_like_yaml_with_exponent_floats():
    assert [parse_value(t) for t in ("32", "true", "[1, 2]", "{a: 1}", "1e-3", "-2E+2", "abc", "  ")] == [
        32, True, [1, 2], {"a": 1}, 0.001, -200.0, "abc", None]
    assert parse_value("[1, 2") == "[1, 2"  # not YAML: the text itself
    assert parse_override(" train.lr = 1e-4") == ("train.lr", 0.0001)
    with pytest.raises(CnnlabError, match="expected KEY=VALUE"):
        parse_override("=3")


def test_apply_override_walks_mappings_and_lists():
    raw: dict = {"model": {"layers": [{"type": "Flatten"}]}}
    apply_override(raw, "model.layers.0.units", 8)
    apply_override(raw, "train.epochs", 3)  # missing sections are created
    assert raw == {"model": {"layers": [{"type": "Flatten", "units": 8}]}, "train": {"epochs": 3}}
    with pytest.raises(CnnlabError, match=r"compare.configs.0: index 0 out of range \(the list has 0 items\)"):
        apply_override(raw, "compare.configs.0", "x.yaml")  # a missing list is created empty: no item 0
    with pytest.raises(CnnlabError, match=r"train.epochs.x: train.epochs is not a mapping"):
        apply_override(raw, "train.epochs.x", 1)
    with pytest.raises(CnnlabError, match=r"model.layers.3: index 3 out of range \(the list has 1 items\)"):
        apply_override(raw, "model.layers.3", {})
    with pytest.raises(CnnlabError, match="the config has no model.layers to edit"):
        apply_override({"model": {"name": "cnn_64x2"}}, "model.layers.0.filters", 8)


def test_base_dict_then_overrides_and_sections_replaced():
    cfg = load_config(None, [("train.epochs", 4)], base={"name": "b", "train": {"epochs": 2, "lr": 0.1}})
    assert (cfg.name, cfg.train.epochs, cfg.train.lr) == ("b", 4, 0.1)
    assert to_dict(cfg)["train"]["epochs"] == 4 and to_dict(cfg)["callbacks"]["stop_at"] == []
    other = replace(cfg, name="c")
    assert other.name == "c" and other.train == cfg.train and cfg.name == "b"
    assert dump_yaml(cfg).startswith("name: b\ndescription: ''\ndata:\n")


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)) + \
    "compare:\n  vary:\n    train.lr: *i\n"


def test_a_billion_laughs_is_refused_before_anything_walks_it(tmp_path):
    (tmp_path / "laughs.yaml").write_text(LAUGHS)  # 10⁹ "lol"s once expanded, 1 KB on disk
    with pytest.raises(CnnlabError, match=r"laughs.yaml expands to more than 100,000 values through its YAML "
                                          r"aliases; write the values out"):
        load_config(tmp_path / "laughs.yaml")
    (tmp_path / "self.yaml").write_text("model: &m\n  layers: [*m]\n")
    with pytest.raises(CnnlabError, match="self.yaml contains itself through a YAML alias"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "anchors.yaml").write_text("train: &t {epochs: 2}\ncompare:\n  vary: {x: [*t, *t]}\n")
    assert read_yaml(tmp_path / "anchors.yaml")["train"] == {"epochs": 2}  # ordinary anchors still work


def test_a_100_mb_config_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        line = "name: x\n" * 131072  # 1 MiB
        for _ in range(100):
            f.write(line)
    with pytest.raises(CnnlabError, match=r"big.yaml is 104,857,600 bytes; a config is at most 1,048,576 "):
        load_config(big)


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 5000 + "]" * 5000, "is nested too deeply to be a config"),
    ("train:\n  seed: 2024-13-01\n", "holds a value YAML cannot read (month must be in 1..12); quote it"),
])
def test_yaml_that_breaks_the_parser_is_one_line(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CnnlabError, match=re.escape(message)):
        load_config(tmp_path / "c.yaml")
