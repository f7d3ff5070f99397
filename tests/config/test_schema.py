"""The schema: defaults, frozen sections, checked choices and augmentation ranges."""

import dataclasses
import re

import pytest

from cnnlab.config import (
    AugmentConfig,
    CallbacksConfig,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    from_dict,
    load_config,
    parse_every,
    parse_override,
)
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import layer_lists


def sets(*items: str) -> list:
    return [parse_override(i) for i in items]


def test_choices_are_checked():
    with pytest.raises(CnnlabError, match="`train.optimizer`: 'adagrad' is not one of adam, adamw, sgd, rmsprop"):
        load_config(None, sets("train.optimizer=adagrad"), layer_lists=layer_lists)


@pytest.mark.parametrize("cls", [DataConfig, ModelConfig, TrainConfig, CallbacksConfig])
def test_every_choice_field_defaults_to_its_first_choice_and_refuses_others(cls):
    choice_fields = [f for f in dataclasses.fields(cls) if "choices" in f.metadata]
    assert choice_fields
    for f in choice_fields:
        assert f.metadata["choices"][0] == f.default
        with pytest.raises(CnnlabError, match=rf"`x.{f.name}`: 'nonsense' is not one of "):
            from_dict(cls, {f.name: "nonsense"}, "x.")


def test_defaults_are_the_first_tutorial():
    cfg = Config()
    assert (cfg.data.dataset, cfg.model.name, cfg.model.layers) == ("fashion-mnist", "cnn_64x2", None)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.optimizer) == (5, 32, "adam")
    assert cfg.train.lr is None and cfg.train.peak_lr == 1e-3  # unset: the model's rate, else Keras's Adam default
    assert (cfg.callbacks.monitor, cfg.callbacks.mode, cfg.callbacks.stop_at) == ("val_loss", "auto", ())
    assert cfg.data.normalize == "auto" and cfg.train.precision == "auto" and not cfg.data.augment.enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


def test_bad_config_is_a_one_line_error():
    for kwargs, words in [({"noise": -0.1}, "noise"), ({"zoom": 1.5}, "below 1"), ({"translate": 2}, "fraction"),
                          ({"padding_mode": "wrap"}, "padding_mode")]:
        with pytest.raises(CnnlabError, match=words):
            AugmentConfig(**kwargs)


def test_augment_ranges_name_the_key_and_enabled_ignores_the_padding_mode():
    with pytest.raises(CnnlabError, match=r"data.augment.cutout is -1; use 0 \(off\) or a positive value"):
        AugmentConfig(cutout=-1)
    with pytest.raises(CnnlabError, match="data.augment.brightness is 1; it is a ± range, use a value below 1"):
        AugmentConfig(brightness=1)
    with pytest.raises(CnnlabError, match="`data.augment.padding_mode`: 'wrap' is not one of zeros, reflect"):
        load_config(None, [("data.augment.padding_mode", "wrap")])
    assert not AugmentConfig(padding_mode="reflect").enabled and AugmentConfig(vflip=True).enabled


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.epochs", 0, "`train.epochs` must be ≥ 1, got 0"),
    ("train.batch_size", -5, "`train.batch_size` must be ≥ 1, got -5"),
    ("train.lr", 0, "`train.lr` must be > 0, got 0.0"),
    ("train.lr", float("nan"), "`train.lr` expects a finite number, got nan"),
    ("train.momentum", -5, "`train.momentum` must be ≥ 0 and < 1, got -5.0"),
    ("train.label_smoothing", 2, "`train.label_smoothing` must be ≥ 0 and < 1, got 2.0"),
    ("train.eval_batch_size", 0, "`train.eval_batch_size` must be ≥ 1, got 0"),
    ("train.threads", -1, "`train.threads` must be ≥ 0, got -1"),
    ("train.warmup_epochs", -1, "`train.warmup_epochs` must be ≥ 0, got -1.0"),
    ("callbacks.early_stopping", -1, "`callbacks.early_stopping` must be ≥ 0, got -1"),
    ("data.image_size", 5000, "`data.image_size` must be ≥ 1 and ≤ 4096, got 5000"),
])
def test_values_out_of_range_are_one_line_errors(key, value, message):
    from cnnlab.config import load_config

    with pytest.raises(CnnlabError, match=re.escape(message)):
        load_config(None, [(key, value)])


def test_text_that_yaml_read_as_something_else_gets_a_quoting_hint():
    from cnnlab.config import load_config, parse_override

    with pytest.raises(CnnlabError, match=r"name expects a string, got False; write it in quotes to keep it text"):
        load_config(None, [parse_override("name=no")])
    assert load_config(None, [parse_override("name='no'")]).name == "no"
    assert load_config(None, [("data.data_dir", __import__("pathlib").Path("/x/y"))]).data.data_dir == "/x/y"


def test_logger_keys():
    cb = CallbacksConfig()
    assert (cb.tensorboard, cb.mlflow, cb.log_every_n_steps) == (False, None, 50)
    cfg = load_config(None, [("callbacks.tensorboard", True), ("callbacks.mlflow", "sqlite:///m.db"),
                             ("callbacks.log_every_n_steps", 0)])
    assert (cfg.callbacks.tensorboard, cfg.callbacks.mlflow, cfg.callbacks.log_every_n_steps) == (True, "sqlite:///m.db", 0)
    with pytest.raises(CnnlabError, match="callbacks.log_every_n_steps is -1"):
        CallbacksConfig(log_every_n_steps=-1)
    with pytest.raises(CnnlabError, match="callbacks.mlflow is empty"):
        load_config(None, [("callbacks.mlflow", " ")])
    with pytest.raises(CnnlabError, match="`callbacks.tensorboard` expects true or false"):
        load_config(None, [("callbacks.tensorboard", "yes")])


@pytest.mark.parametrize(("value", "parsed"), [
    (500, ("steps", 500.0)), ("500steps", ("steps", 500.0)), ("1 step", ("steps", 1.0)), ("30s", ("seconds", 30.0)),
    ("10min", ("seconds", 600.0)), ("1.5h", ("seconds", 5400.0)), (0, None), ("off", None), (False, None)])
def test_checkpoint_every_reads_times_and_step_counts(value, parsed):
    assert parse_every(value, "k") == parsed
    cfg = load_config(None, [("callbacks.checkpoint_every", value)])
    assert cfg.callbacks.checkpoint_every == value


@pytest.mark.parametrize("value", ["10 parsecs", -3, "1.5steps", "0s", True, "min", ""])
def test_a_bad_checkpoint_every_is_one_line_naming_the_key(value):
    with pytest.raises(CnnlabError) as err:
        load_config(None, [("callbacks.checkpoint_every", value)])
    assert str(err.value) == (f"`callbacks.checkpoint_every`: {value!r} is neither a time nor a number of steps; "
                              "write e.g. 10min, 30s, 2h, 500steps, 500, or 0 for epoch ends only")


def test_cache_features_takes_yamls_on_and_off_as_the_words_they_were():
    assert TrainConfig().cache_features == "auto"
    assert load_config(None, [("train.cache_features", False)]).train.cache_features == "off"  # YAML's `off`
    assert load_config(None, [("train.cache_features", True)]).train.cache_features == "on"
    assert load_config(None, [("train.cache_features", "off")]).train.cache_features == "off"
    with pytest.raises(CnnlabError, match=r"`train.cache_features`: 'sometimes' is not one of auto, on, off"):
        load_config(None, [("train.cache_features", "sometimes")])
