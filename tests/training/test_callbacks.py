"""Callbacks: metric names and directions, stop targets, early stopping, the NaN guard, checkpoints, output."""

import io
import math

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.training.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    NanGuard,
    ProgressBar,
    StallWarning,
    StopAtTarget,
    format_epoch,
    is_improvement,
    metric_name,
    overrides,
    resolve_mode,
)
from cnnlab.training.checkpoint import load_checkpoint


def test_stop_at_target_and_early_stopping(toy, make_trainer):
    t = make_trainer(toy, callbacks=[StopAtTarget.parse("val_acc=0.5")], epochs=10)
    t.fit()
    assert t.epoch < 10 and "reached val_acc" in t.stop_reason
    t = make_trainer(toy, callbacks=[StopAtTarget.parse("loss=100")], epochs=10)  # loss = training loss
    t.fit()
    assert t.epoch == 1
    t = make_trainer(toy, callbacks=[EarlyStopping("val_acc", "max", patience=1, min_delta=1.0)], epochs=10)
    t.fit()
    assert t.epoch == 2 and "early stopping" in t.stop_reason


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(toy, tmp_path, make_trainer):
    class Poison(Callback):  # from epoch 2 on, break the weights so the loss is NaN
        def on_train_epoch_start(self, trainer):
            if trainer.epoch == 1:
                with torch.no_grad():
                    trainer.model.conv2d.weight.fill_(float("nan"))

    t = make_trainer(toy, tmp_path, [ModelCheckpoint("val_loss", "min"), Poison(), NanGuard()], epochs=4)
    t.fit()
    assert t.failure and "became nan" in t.failure and "kept the checkpoint of epoch 1" in t.failure
    assert len(t.history) == 1
    state = load_checkpoint(tmp_path / "last")
    assert state["epoch"] == 1 and all(math.isfinite(h["train_loss"]) for h in state["history"])


def test_metric_names_and_directions():
    assert [metric_name(n) for n in ("loss", "acc", "accuracy", "val_accuracy", " val_loss ")] == [
        "train_loss", "train_acc", "train_acc", "val_acc", "val_loss"]
    with pytest.raises(CnnlabError, match="unknown metric 'val_f1'; valid: loss, acc, val_loss, val_acc"):
        metric_name("val_f1")
    assert [resolve_mode(m) for m in ("loss", "acc", "val_loss", "val_acc")] == ["min", "max", "min", "max"]
    assert resolve_mode("val_loss", "max") == "max"
    with pytest.raises(CnnlabError, match="callbacks.mode: 'up' is not one of auto, min, max"):
        resolve_mode("val_loss", "up")


def test_is_improvement_needs_more_than_min_delta_and_a_finite_value():
    assert is_improvement(0.5, None, "min") and is_improvement(0.4, 0.5, "min")
    assert not is_improvement(0.5, 0.5, "min") and not is_improvement(0.5, 0.5, "max")  # ties do not count
    assert not is_improvement(0.45, 0.5, "min", min_delta=0.05) and is_improvement(0.44, 0.5, "min", min_delta=0.05)
    assert is_improvement(0.9, 0.8, "max") and not is_improvement(0.7, 0.8, "max")
    assert not is_improvement(float("nan"), None, "min") and not is_improvement(float("inf"), 1.0, "max")


def test_stop_at_parses_targets_and_rejects_malformed_items():
    stop = StopAtTarget.parse("val_acc=0.91")
    assert (stop.monitor, stop.mode, stop.target) == ("val_acc", "max", 0.91)
    assert (StopAtTarget.parse("loss=0.3").monitor, StopAtTarget.parse("loss=0.3").mode) == ("train_loss", "min")
    for bad in ("val_acc", "val_acc=high"):
        with pytest.raises(CnnlabError, match=rf"`callbacks.stop_at` '{bad}': expected METRIC=VALUE"):
            StopAtTarget.parse(bad)
    with pytest.raises(CnnlabError, match="unknown metric 'val_f1'"):
        StopAtTarget.parse("val_f1=0.9")
    assert EarlyStopping("val_loss", "auto", patience=2).mode == "min"  # Keras's auto, resolved once here
    with pytest.raises(CnnlabError, match="`mode` 'up' is not one of min, max, auto"):
        EarlyStopping("val_loss", "up", patience=2)


def test_monitors_keep_their_state_under_their_own_key():
    early = EarlyStopping("val_acc", "max", patience=3)
    assert early.state_key == "EarlyStopping:val_acc" and NanGuard().state_key == "NanGuard"
    assert ModelCheckpoint("loss", "min", state_key="mine").state_key == "mine"
    early.best, early.wait = 0.8, 2
    again = EarlyStopping("val_acc", "max", patience=3)
    again.load_state_dict(early.state_dict())
    assert (again.best, again.wait) == (0.8, 2)
    assert early.current({"val_acc": float("nan")}) is None and early.current({}) is None
    assert early.current({"val_acc": 0.5}) == 0.5


def test_orders_and_overridden_hooks():
    assert NanGuard.order < Callback.order < ModelCheckpoint.order < ProgressBar.order
    assert overrides(NanGuard(), "on_train_epoch_end") and not overrides(NanGuard(), "on_train_batch_end")
    assert overrides(ProgressBar(io.StringIO()), "on_train_batch_end")


def test_epoch_lines_are_keras_style():
    m = {"seconds": 4.12, "train_loss": 0.25571, "train_acc": 0.90521, "val_loss": 0.26394, "val_acc": 0.90467}
    assert format_epoch(3, 5, m) == ("Epoch 3/5 - 4.1s - loss 0.2557 - acc 0.9052 - val_loss 0.2639 - "
                                     "val_acc 0.9047")
    assert format_epoch(1, 1, {**m, "val_loss": None}) == "Epoch 1/1 - 4.1s - loss 0.2557 - acc 0.9052"


def test_progress_bar_without_a_terminal_prints_one_line_per_epoch(toy, make_trainer):
    out = io.StringIO()
    bar = ProgressBar(out)
    assert not bar.live  # a StringIO is no terminal
    make_trainer(toy, callbacks=[bar], epochs=2).fit()
    lines = out.getvalue().splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(" - loss " in line and " - val_acc " in line for line in lines)


# --- the protocol: declared order, symmetric hooks, stop requests and exceptions, per-instance state --------


class Recorder(Callback):
    def __init__(self, name, log, order=0, key=None):
        self.name, self.log, self.order, self._key = name, log, order, key

    @property
    def state_key(self):
        return self._key or f"Recorder:{self.name}"

    def on_fit_start(self, trainer):
        self.log.append((self.name, "fit_start"))

    def on_train_epoch_start(self, trainer):
        self.log.append((self.name, "epoch_start"))

    def on_train_batch_start(self, trainer, batch):
        self.log.append((self.name, "batch_start", batch))

    def on_train_batch_end(self, trainer, batch, loss):
        self.log.append((self.name, "batch_end", batch))

    def on_train_epoch_end(self, trainer, logs):
        self.log.append((self.name, "epoch_end"))

    def on_fit_end(self, trainer):
        self.log.append((self.name, "fit_end"))

    def state_dict(self):
        return {"calls": len(self.log)}


def test_hooks_are_paired_and_run_in_declared_order(toy, make_trainer):
    log = []
    t = make_trainer(toy, callbacks=[Recorder("late", log, order=5), Recorder("early", log, order=-5)], epochs=1,
                     batch_size=60)  # 180 training images: 3 steps
    t.fit()
    names = [e[1:] for e in log if e[0] == "early"]
    assert names == [("fit_start",), ("epoch_start",), ("batch_start", 0), ("batch_end", 0), ("batch_start", 1),
                     ("batch_end", 1), ("batch_start", 2), ("batch_end", 2), ("epoch_end",), ("fit_end",)]
    assert [e[0] for e in log] == ["early", "late"] * 10  # every hook, in order: -5 before 5
    assert [type(cb).__name__ for cb in t.callbacks] == ["Recorder", "Recorder"]


def test_builtin_orders_put_the_guard_first_and_output_last():
    assert NanGuard.order < Callback.order < ModelCheckpoint.order < ProgressBar.order


def test_stop_requests_are_or_only_and_let_the_epoch_finish(toy, make_trainer):
    class Ask(Callback):
        def on_train_epoch_end(self, trainer, logs):
            if trainer.epoch == 2:
                trainer.request_stop("enough")

    log = []
    t = make_trainer(toy, callbacks=[Ask(), Recorder("after", log, order=10)], epochs=5)
    t.fit()
    assert t.epoch == 2 and t.should_stop and t.stop_reason == "enough" and t.failure is None
    assert log.count(("after", "epoch_end")) == 2  # a later callback still saw epoch 2


def test_stop_training_ends_at_once_and_failure_drops_the_epoch(toy, tmp_path, make_trainer):
    from cnnlab.training.callbacks import StopTraining

    class Halt(Callback):
        order = -1

        def __init__(self, failed):
            self.failed = failed

        def on_train_epoch_end(self, trainer, logs):
            if trainer.epoch == 2:
                raise StopTraining("halt", failed=self.failed)

    log = []
    t = make_trainer(toy, tmp_path / "a", [Halt(False), Recorder("after", log, order=10)], epochs=5)
    t.fit()
    assert (t.epoch, len(t.history), t.stop_reason, t.failure) == (2, 2, "halt", None)
    # a plain stop is a request: the callbacks after it still record epoch 2, and nothing runs after it
    assert log.count(("after", "epoch_end")) == 2 and log[-1] == ("after", "fit_end")
    t = make_trainer(toy, tmp_path / "b", [Halt(True), ModelCheckpoint("val_loss", "min")], epochs=5)
    t.fit()
    assert (t.epoch, len(t.history), t.failure) == (1, 1, "halt")
    assert load_checkpoint(tmp_path / "b" / "last")["epoch"] == 1  # the failed epoch was never checkpointed


def test_state_keys_are_per_instance_and_must_be_unique(toy, tmp_path, make_trainer):
    a = EarlyStopping("val_loss", "min", patience=3)
    b = EarlyStopping("val_acc", "max", patience=3)
    assert a.state_key == "EarlyStopping:val_loss" and b.state_key == "EarlyStopping:val_acc"
    t = make_trainer(toy, tmp_path, [a, b, ModelCheckpoint("val_loss", "min")], epochs=2)
    t.fit()
    saved = load_checkpoint(tmp_path / "last")["callbacks"]
    assert saved["EarlyStopping:val_loss"]["best"] == a.best and saved["EarlyStopping:val_acc"]["best"] == b.best
    assert a.best != b.best  # two instances of one class kept their own state
    with pytest.raises(CnnlabError, match="two callbacks share the state_key 'EarlyStopping:val_loss'"):
        make_trainer(toy, callbacks=[EarlyStopping("val_loss", "min", 2), EarlyStopping("loss", "min", 2,
                                                                                       state_key="x"),
                                     EarlyStopping("val_loss", "min", 5)])


def test_monitor_callbacks_resolve_their_mode_once():
    assert EarlyStopping("val_loss", "auto", patience=2).mode == "min"
    assert ModelCheckpoint("acc", "auto").mode == "max"
    with pytest.raises(CnnlabError, match="`mode` 'up' is not one of min, max, auto"):
        EarlyStopping("val_loss", "up", patience=2)
    best = ModelCheckpoint("val_acc", "max", min_delta=0.01)
    best.best = 0.90
    assert not best.improved(0.905) and best.improved(0.911)


def _dead_net(classes: int = 3) -> torch.nn.Module:
    """Every hidden ReLU dead (a bias far below any input): the output is the last bias, whatever the image."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 8), torch.nn.ReLU(), torch.nn.Linear(8, classes))
    with torch.no_grad():
        net[1].bias.fill_(-1e4)
        net[3].bias.zero_()
    return net


def _trainer(model, data, callbacks, batch_size=16, epochs=1, lr=0.001):
    from cnnlab.config import TrainConfig
    from cnnlab.data.tensors import Normalizer, split
    from cnnlab.training.trainer import Trainer

    from .conftest import CPU

    train, val = split(data, 0.25, seed=0)
    return Trainer(model, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr), train_data=train, val_data=val,
                   normalizer=Normalizer(), engine=CPU, callbacks=callbacks)


def test_stall_warning_names_a_collapse_once_with_its_fix(toy):
    lines: list[str] = []
    t = _trainer(_dead_net(), toy, [StallWarning(lines.append, "lower train.lr or use a BatchNorm variant")], epochs=2)
    t.fit()
    assert len(lines) == 1 and len(t.history) == 2  # it warns once, and training goes on
    assert lines[0].startswith("warning: the model's output no longer depends on its input (after epoch 1: loss ")
    assert "≈ ln 3 = 1.0986, accuracy" in lines[0] and "learning rate 0.001 is too high" in lines[0]
    assert lines[0].endswith("lower train.lr or use a BatchNorm variant") and "\n" not in lines[0]


def test_stall_warning_checks_early_in_a_long_first_epoch(toy):
    lines: list[str] = []
    cb = StallWarning(lines.append, "fix it", check_step=3)  # 180 images / batch 16: 12 steps ≥ 2 × 3
    t = _trainer(_dead_net(), toy, [cb])
    t.fit()
    assert len(lines) == 1 and lines[0].startswith("warning: the model's output no longer depends on its input "
                                                   "(after 3 steps: loss 1.0985 ≈ ln 3 = 1.0986); training has collapsed")


def test_no_stall_warning_when_the_model_learns_or_merely_starts_slowly(toy, make_model):
    lines: list[str] = []
    _trainer(make_model(), toy, [StallWarning(lines.append, "x", check_step=3)]).fit()  # lr 0.001: it learns
    assert lines == []
    cb = StallWarning(lines.append, "x")
    t = _trainer(make_model(), toy, [cb], lr=1e-9)  # alive but not moving: never called a collapse
    t.fit()
    assert not cb.constant_output(t)
    assert all("no longer depends" not in line for line in lines)
