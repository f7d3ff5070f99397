"""The schema: defaults, frozen sections, checked choices and augmentation ranges."""

import dataclasses

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
    parse_override,
)
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import layer_lists


def sets(*items: str) -> list:
    return [parse_override(i) for i in items]


def test_choices_are_checked():
    with pytest.raises(CnnlabError, match="train.optimizer: 'adagrad' is not one of adam, adamw, sgd, rmsprop"):
        load_config(None, sets("train.optimizer=adagrad"), layer_lists=layer_lists)


@pytest.mark.parametrize("cls", [DataConfig, ModelConfig, TrainConfig, CallbacksConfig])
def test_every_choice_field_defaults_to_its_first_choice_and_refuses_others(cls):
    choice_fields = [f for f in dataclasses.fields(cls) if "choices" in f.metadata]
    assert choice_fields
    for f in choice_fields:
        assert f.metadata["choices"][0] == f.default
        with pytest.raises(CnnlabError, match=rf"x.{f.name}: 'nonsense' is not one of "):
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
    with pytest.raises(CnnlabError, match="data.augment.padding_mode: 'wrap' is not one of zeros, reflect"):
        load_config(None, [("data.augment.padding_mode", "wrap")])
    assert not AugmentConfig(padding_mode="reflect").enabled and AugmentConfig(vflip=True).enabled
