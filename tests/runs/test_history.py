"""best_epoch: one definition, the same epoch the best checkpoint holds, with ties going to the earliest."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer, split
from cnnlab.models.spec import build_spec
from cnnlab.runs.history import HistoryWriter, best_epoch
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.callbacks import ModelCheckpoint
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.engine import Engine
from cnnlab.training.trainer import Trainer

H = [{"epoch": 1, "val_loss": 0.5, "val_acc": 0.80, "train_loss": 0.9},
     {"epoch": 2, "val_loss": 0.4, "val_acc": 0.85, "train_loss": 0.6},
     {"epoch": 3, "val_loss": 0.4, "val_acc": 0.85, "train_loss": 0.5},  # a tie with epoch 2
     {"epoch": 4, "val_loss": 0.45, "val_acc": 0.84, "train_loss": 0.4}]


def test_ties_go_to_the_earliest_epoch_in_both_directions():
    assert best_epoch(H, "val_loss")["epoch"] == 2
    assert best_epoch(H, "val_acc")["epoch"] == 2
    assert best_epoch(H, "loss")["epoch"] == 4  # "loss" is the training loss, as in Keras's logs


def test_mode_is_explicit_or_from_the_metric():
    assert best_epoch(H, "val_acc", "min")["epoch"] == 1
    assert best_epoch(H, "val_loss", "max")["epoch"] == 1
    assert best_epoch(H, "val_loss", "auto") == best_epoch(H, "val_loss", "min")


def test_min_delta_needs_a_real_improvement():
    # 0.4 improves on 0.5 by 0.1, which is not more than min_delta=0.1: epoch 1 stays the best
    assert best_epoch(H, "val_loss", min_delta=0.1)["epoch"] == 1
    assert best_epoch(H, "val_loss", min_delta=0.05)["epoch"] == 2


def test_missing_and_non_finite_values_never_count():
    rows = [{"epoch": 1, "val_loss": None}, {"epoch": 2, "val_loss": float("nan")}, {"epoch": 3, "val_loss": 2.0}]
    assert best_epoch(rows, "val_loss")["epoch"] == 3
    assert best_epoch(rows[:2], "val_loss") is None
    assert best_epoch([], "val_acc") is None


LAYERS = [{"type": "Flatten"}, {"type": "Dense", "units": 16, "activation": "relu"},
          {"type": "Dense", "units": "num_classes"}]


@pytest.mark.parametrize(("monitor", "mode"), [("val_loss", "min"), ("val_acc", "max"), ("loss", "min")])
def test_the_best_checkpoint_holds_the_best_epoch_of_the_written_history(toy, tmp_path, monitor, mode):
    torch.manual_seed(0)
    train, val = split(toy, 0.25, seed=0)
    run = RunDir.create(tmp_path / "run")
    model = build_spec(LAYERS, input_shape=toy.shape, num_classes=3)
    trainer = Trainer(model, TrainConfig(epochs=6, batch_size=16, lr=0.02, optimizer="sgd"), train_data=train,
                      val_data=val, normalizer=Normalizer(), engine=Engine(torch.device("cpu"), None, False),
                      callbacks=[HistoryWriter(run), ModelCheckpoint(monitor, mode)], checkpoint_dir=run.checkpoints)
    trainer.fit()
    written = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
    assert written == trainer.history  # the writer runs after the last epoch too
    saved = load_checkpoint(run.checkpoints / "best")
    assert saved["epoch"] == best_epoch(written, monitor, mode)["epoch"]


def test_a_runs_best_epoch_uses_the_min_delta_it_recorded():
    from cnnlab.runs.history import run_best_epoch

    rows = [{"epoch": 1, "val_loss": 0.70}, {"epoch": 2, "val_loss": 0.58}, {"epoch": 3, "val_loss": 0.52},
            {"epoch": 4, "val_loss": 0.505}]
    assert run_best_epoch({"monitor": "val_loss", "mode": "min", "min_delta": 0.05}, rows)["epoch"] == 3
    assert run_best_epoch({"monitor": "val_loss", "mode": "min"}, rows)["epoch"] == 4
