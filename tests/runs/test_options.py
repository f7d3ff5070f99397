"""The training options, defined once: typed values reach the config typed, from the CLI and from Python."""

from __future__ import annotations

import argparse

import pytest

from cnnlab.cli.main import add_training_flags, training_options
from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import BY_NAME, OPTIONS, experiment_config, layer_lists, option_overrides


def parsed(*argv: str) -> dict:
    p = argparse.ArgumentParser()
    add_training_flags(p)
    return training_options(p.parse_args(list(argv)))


def test_every_option_sets_config_keys_that_exist():
    for opt in OPTIONS:
        for key in opt.keys:
            section, _, field = key.partition(".")
            assert field in getattr(load_config(), section).__dataclass_fields__, (opt.name, key)


def test_values_stay_typed_where_yaml_would_change_them():
    # a folder named 2024 is a string, a weights file named "on" is not True, "1e-3" text is a float only by flag type
    cfg = experiment_config(data_dir="2024", weights="on", lr=1e-3)
    assert cfg.data.data_dir == "2024" and cfg.model.weights == "on" and cfg.train.lr == 0.001
    cfg = experiment_config(**parsed("--data-dir", "2024", "--weights", "on", "--lr", "1e-3"))
    assert cfg.data.data_dir == "2024" and cfg.model.weights == "on" and cfg.train.lr == 0.001


def test_the_cli_flags_and_the_python_keywords_give_the_same_config():
    argv = ["--model", "cnn_32x1", "--dataset", "mnist", "--epochs", "2", "--batch-size", "64", "--lr", "0.01",
            "--precision", "fp32", "--stop-at", "val_acc=0.9", "--stop-at", "loss=0.1", "--fine-tune"]
    from_cli = experiment_config(**parsed(*argv))
    from_python = experiment_config(model="cnn_32x1", dataset="mnist", epochs=2, batch_size=64, lr=0.01,
                                    precision="fp32", stop_at=["val_acc=0.9", "loss=0.1"], fine_tune=True)
    assert from_cli == from_python
    assert from_cli.model.layers is None and from_cli.model.freeze == "backbone"
    assert (from_cli.model.freeze_epochs, from_cli.model.backbone_lr) == (1, 0.1)
    assert from_cli.callbacks.stop_at == ("val_acc=0.9", "loss=0.1")


def test_options_not_given_leave_the_config_alone():
    assert option_overrides({"epochs": None, "pretrained": None, "stop_at": None}) == []
    # None is "not given"; False and [] are values the user gave (an explicit --no-pretrained, an empty list)
    assert option_overrides({"pretrained": False, "stop_at": []}) == [("model.pretrained", False), ("callbacks.stop_at", [])]
    assert experiment_config("fashion_mnist_cnn") == experiment_config("fashion_mnist_cnn", epochs=None)


def test_overrides_come_after_options():
    cfg = experiment_config(epochs=3, overrides=[("train.epochs", 7)])
    assert cfg.train.epochs == 7


def test_unknown_option_and_bad_types_name_the_key():
    with pytest.raises(CnnlabError, match="unknown training option 'epoch'"):
        experiment_config(epoch=3)
    with pytest.raises(CnnlabError, match="`train.epochs` expects an integer, got 'three'"):
        experiment_config(epochs="three")


def test_recipe_and_config_are_exclusive_and_recipes_follow_the_dataset():
    assert experiment_config(recipe="fast", dataset="mnist").data.dataset == "mnist"
    with pytest.raises(CnnlabError, match="give a recipe or a config, not both"):
        experiment_config("fashion_mnist_cnn", recipe="fast")


def test_layer_lists_let_overrides_edit_a_named_tutorial_model():
    cfg = experiment_config(model="cnn_64x2", overrides=[("model.layers.0.filters", 16)])
    assert cfg.model.layers[0] == {"type": "Conv2D", "filters": 16, "kernel_size": 3, "activation": "relu"}
    assert layer_lists("cnn_64x2")[0]["filters"] == 64  # a fresh copy each time
    with pytest.raises(CnnlabError, match="'resnet18' is not defined by a layer list"):
        experiment_config(model="resnet18", overrides=[("model.layers.0.filters", 16)])


def test_each_flag_is_derived_from_the_name():
    assert BY_NAME["batch_size"].flag == "--batch-size" and BY_NAME["data_dir"].keys == ("data.data_dir",)
    assert BY_NAME["fine_tune"].keys == ("model.freeze", "model.freeze_epochs", "model.backbone_lr")


def test_a_resume_applies_what_it_can_and_refuses_the_rest(tmp_path):
    from cnnlab.runs.options import RESUME_OPTIONS, resume_config

    (tmp_path / "config.yaml").write_text("train:\n  epochs: 2\n")
    cfg = resume_config(tmp_path, epochs=5, batch_size=64, lr=0.01, precision="fp32", stop_at=["val_acc=0.9"],
                        overrides=[("train.label_smoothing", 0.1)])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.label_smoothing) == (5, 64, 0.01, 0.1)
    assert set(RESUME_OPTIONS) < set(BY_NAME)
    with pytest.raises(CnnlabError, match=r"so `model`, `weights`, `out` cannot apply; drop them \(`epochs` extends"):
        resume_config(tmp_path, model="resnet18", weights="missing.pth", refused=["out"])


def test_a_resume_keeps_the_monitor_its_best_checkpoint_was_chosen_by(tmp_path):
    from cnnlab.runs.options import resume_config

    (tmp_path / "config.yaml").write_text("callbacks:\n  monitor: val_loss\n")
    with pytest.raises(CnnlabError, match=r"`callbacks.monitor` cannot change on a resume: checkpoints/best was "
                                          r"chosen by val_loss"):
        resume_config(tmp_path, overrides=[("callbacks.monitor", "val_acc")])
    with pytest.raises(CnnlabError, match=r"`callbacks.min_delta` cannot change"):
        resume_config(tmp_path, overrides=[("callbacks.min_delta", 0.01)])


def test_zero_and_false_are_values_not_absence():
    assert option_overrides({"epochs": 0, "pretrained": False, "lr": 0.0}) == [
        ("train.epochs", 0), ("model.pretrained", False), ("train.lr", 0.0)]
    with pytest.raises(CnnlabError, match="`train.epochs` must be ≥ 1, got 0"):
        experiment_config(epochs=0)
    assert parsed("--epochs", "0") == {"epochs": 0}


def test_log_flag_and_loggers_keyword(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = experiment_config(**parsed("--log", "tensorboard", "--log", "mlflow"))
    assert cfg.callbacks.tensorboard and cfg.callbacks.mlflow == "mlflow.db"  # MLflow's own local default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/team.db")
    assert experiment_config(loggers="mlflow").callbacks.mlflow == "sqlite:////tmp/team.db"
    assert not experiment_config(loggers="mlflow").callbacks.tensorboard
    assert BY_NAME["loggers"].flag == "--log" and BY_NAME["loggers"].keys == ("callbacks.tensorboard", "callbacks.mlflow")
    with pytest.raises(CnnlabError, match=r"`loggers`: unknown logger 'wandb'; valid: tensorboard, mlflow"):
        experiment_config(loggers=["wandb"])
    with pytest.raises(SystemExit):
        parsed("--log", "wandb")  # argparse lists the choices
