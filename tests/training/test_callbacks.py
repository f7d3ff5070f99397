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
    StallWarning,
    StopAtTarget,
    is_improvement,
    metric_name,
    overrides,
    resolve_mode,
)
from cnnlab.training.checkpoint import load_checkpoint
from cnnlab.training.progressbar import ProgressBar


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


# --- direct unit tests of each hook on a stand-in trainer (fast: mutation testing runs them per mutant) -------


class FakeTrainer:
    """The attributes and methods of :class:`~cnnlab.training.trainer.Trainer` that callbacks use."""

    def __init__(self, epoch=0, epochs=5, steps_per_epoch=10, **kw):
        from types import SimpleNamespace

        self.epoch, self.epochs, self.steps_per_epoch = epoch, epochs, steps_per_epoch
        self.lr, self.progress, self.val_data, self.model = 0.1, object(), None, None
        self.engine = SimpleNamespace(device=torch.device("cpu"), channels_last=False)
        self.normalizer = lambda x, channels_last=False: x  # noqa: ARG005 - the identity: logits = the images
        self.saved, self.stops = [], []
        self.__dict__.update(kw)

    def save_checkpoint(self, name):
        self.saved.append((name, self.epoch))

    def request_stop(self, reason):
        self.stops.append(reason)


def _labels(*counts, num_classes=None):
    """Data with ``counts[c]`` images of class c (images: 4 distinct 1x1x2 vectors, enough for a probe)."""
    from types import SimpleNamespace

    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(2 * len(labels), dtype=torch.float32).reshape(len(labels), 1, 1, 2)
    return SimpleNamespace(labels=labels, num_classes=num_classes or len(counts), images=images)


def test_stop_training_is_a_plain_stop_unless_failed():
    from cnnlab.training.callbacks import StopTraining

    plain = StopTraining("halt")
    assert (str(plain), plain.reason, plain.failed) == ("halt", "halt", False)
    assert StopTraining("diverged", failed=True).failed is True


def test_nan_guard_names_the_problem_and_the_checkpoint_kept():
    net = torch.nn.Linear(2, 2)
    ok = FakeTrainer(epoch=1, model=net)
    NanGuard().on_train_epoch_end(ok, {"train_loss": 0.5})  # finite loss and weights: nothing happens
    from cnnlab.training.callbacks import StopTraining

    with pytest.raises(StopTraining) as first:
        NanGuard().on_train_epoch_end(FakeTrainer(epoch=1, model=net), {"train_loss": float("nan")})
    assert first.value.failed and first.value.reason == (
        "training loss became nan in epoch 1; stopped and no epoch finished cleanly "
        "(lower train.lr, add warm-up, or check the data)")
    with torch.no_grad():
        net.bias[1] = float("inf")
    with pytest.raises(StopTraining) as later:
        NanGuard().on_train_epoch_end(FakeTrainer(epoch=3, model=net), {"train_loss": 0.5})
    assert later.value.reason == ("a weight became NaN or infinite in epoch 3; stopped and kept the checkpoint of "
                                  "epoch 2 (lower train.lr, add warm-up, or check the data)")


def test_stall_warning_measures_the_label_entropy_and_balance():
    cb = StallWarning(print, "x")
    cb.on_fit_start(FakeTrainer(train_data=_labels(3, 1)))  # p = (3/4, 1/4): H = 0.5623, the majority 3/4
    assert cb.entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-12)  # float64 sums
    assert (cb.majority, cb.classes, cb.balanced, cb.done) == (0.75, 2, False, False)
    cb.on_fit_start(FakeTrainer(train_data=_labels(2, 2, 0)))  # a class with no image adds nothing to H
    assert cb.entropy == pytest.approx(math.log(2), rel=1e-12) and cb.classes == 3 and not cb.balanced
    cb.on_fit_start(FakeTrainer(train_data=_labels(6, 3, 3)))  # H = 1.0397 < 0.995 ln 3 = 1.0931: unbalanced
    assert cb.entropy == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(4), rel=1e-12) and not cb.balanced
    cb.on_fit_start(FakeTrainer(train_data=_labels(5, 5)))  # two even classes: H = ln 2, balanced, checked
    assert cb.balanced and not cb.done
    cb.on_fit_start(FakeTrainer(epoch=2, train_data=_labels(5, 5)))  # a resumed run is past the check
    assert cb.done is True
    cb.on_fit_start(FakeTrainer(train_data=_labels(5)))  # one class: H = 0, nothing to detect
    assert cb.done is True


def test_stall_warning_counts_a_loss_within_tol_of_h_as_at_h():
    cb = StallWarning(print, "x", tol=0.02)
    cb.entropy = math.log(3)  # tol · H = 0.02197; tol / H would be 0.0182
    assert cb._at_entropy(math.log(3) + 0.02) and not cb._at_entropy(math.log(3) + 0.023)
    exact = StallWarning(print, "x", tol=0.0)
    exact.entropy = 1.0
    assert exact._at_entropy(1.0)  # the bound is inclusive


def test_constant_output_probes_the_validation_images_else_the_training_ones():
    same = _labels(2, 2)
    same.images = torch.ones(4, 1, 1, 2)
    flat = torch.nn.Flatten()  # logits = the (identity-normalised) images
    cb = StallWarning(print, "x")
    assert cb.constant_output(FakeTrainer(model=flat, train_data=_labels(2, 2), val_data=same))
    assert not cb.constant_output(FakeTrainer(model=flat, train_data=same, val_data=_labels(2, 2)))
    assert cb.constant_output(FakeTrainer(model=flat, train_data=same))  # no validation data: the training images
    assert not StallWarning(print, "x", probe=1).constant_output(FakeTrainer(model=flat, train_data=same))  # 1 image
    two = _labels(1, 1)
    two.images = torch.ones(2, 1, 1, 2)
    assert cb.constant_output(FakeTrainer(model=flat, train_data=two))  # two identical images are enough


def test_constant_output_tolerance_grows_with_the_logits():
    def spread(d):  # two logit rows, largest |logit| 100, differing by d: constant iff d <= 1e-4 · (1 + 100)
        data = _labels(1, 1)
        data.images = torch.tensor([[100.0, 0.0], [100.0, d]]).reshape(2, 1, 1, 2)
        return StallWarning(print, "x").constant_output(FakeTrainer(model=torch.nn.Flatten(), train_data=data))

    assert spread(0.001) and spread(0.0100) and not spread(0.01015)  # 0.0101 is the bound


LN2 = math.log(2)


def _stall(lines, *, entropy=LN2, majority=0.5, classes=2, balanced=True, **kw):
    cb = StallWarning(lines.append, "lower the rate", **kw)
    cb.entropy, cb.majority, cb.classes, cb.balanced, cb.done = entropy, majority, classes, balanced, False
    return cb


def test_stall_warning_after_epoch_1_reads_validation_metrics_else_training_ones():
    h = math.log(2)
    cases = [  # (logs, warns)
        ({"val_loss": h, "val_acc": 0.5, "train_loss": 0.1, "train_acc": 0.99}, True),
        ({"val_loss": 0.1, "val_acc": 0.99, "train_loss": h, "train_acc": 0.5}, False),
        ({"val_loss": None, "val_acc": None, "train_loss": h, "train_acc": 0.5}, True),
        ({"train_loss": h, "train_acc": 0.5}, True),
        ({"train_loss": None, "train_acc": 0.5}, False),
        ({"train_loss": float("nan"), "train_acc": 0.5}, False),
        ({"train_loss": 0.3, "train_acc": 0.4}, False),  # far from H: not stalled, whatever the accuracy
        ({"train_loss": h, "train_acc": 0.5 + 0.02}, True),  # within 2 points of chance
        ({"train_loss": h, "train_acc": 0.53}, False),
        ({"train_loss": h, "train_acc": 0.9}, False),
    ]
    for logs, warns in cases:
        lines = []
        _stall(lines).on_train_epoch_end(FakeTrainer(epoch=1, model=torch.nn.Flatten(), train_data=_labels(2, 2)),
                                         logs)
        assert (len(lines) == 1) == warns, logs
    lines = []
    cb = _stall(lines)
    cb.on_train_epoch_end(FakeTrainer(epoch=2, model=torch.nn.Flatten(), train_data=_labels(2, 2)),
                          {"train_loss": h, "train_acc": 0.5})
    assert lines == []  # only epoch 1 is checked


def test_stall_warning_text_for_unbalanced_labels_and_a_live_model():
    lines = []
    cb = _stall(lines, entropy=0.5623, majority=0.75, balanced=False)
    cb.on_train_epoch_end(FakeTrainer(epoch=1, model=torch.nn.Flatten(), train_data=_labels(3, 1)),
                          {"train_loss": 0.5623, "train_acc": 0.75})
    assert lines == ["warning: after epoch 1 the loss is 0.5623 ≈ the label entropy 0.5623, accuracy 0.750 ≈ chance: "
                     "the model has learned nothing yet; check the labels and the learning rate 0.1 (an LR range "
                     "test, cnnlab lr-find, shows where it learns)"]


def test_stall_warning_early_check_runs_once_at_its_step_of_a_long_first_epoch():
    h = torch.tensor(math.log(2))
    dead = _labels(5, 5)
    dead.images = torch.ones(10, 1, 1, 2)

    def warned(*, epoch=0, steps=6, batch=2, loss=h, done=False, images=dead):
        lines = []
        cb = _stall(lines, check_step=3)
        cb.done = done
        cb.on_train_batch_end(FakeTrainer(epoch=epoch, steps_per_epoch=steps, model=torch.nn.Flatten(),
                                          train_data=images), batch, loss)
        return len(lines)

    assert warned() == 1  # step 3 of 6 = 2 × 3: checked
    assert warned(batch=1) == 0 and warned(batch=3) == 0  # only at the check step
    assert warned(steps=5) == 0 and warned(steps=9) == 1  # an epoch shorter than 2 × 3 steps is not checked early
    assert warned(epoch=1) == 0 and warned(done=True) == 0
    assert warned(loss=torch.tensor(0.3)) == 0  # a constant model whose loss is off H: not this failure
    assert warned(images=_labels(5, 5)) == 0  # at H but the output still depends on the input


def test_monitors_keep_an_explicit_mode_their_key_and_keras_min_delta():
    assert ModelCheckpoint("val_loss", "max").mode == "max"  # explicit, not resolved from the metric
    from cnnlab.training.callbacks import MonitorCallback

    base = MonitorCallback("val_loss", "min")
    base.best = 0.5
    assert base.min_delta == 0.0 and base.improved(0.4999)  # Keras's default min_delta=0: any decrease counts
    early = EarlyStopping("val_loss", "min", patience=2)
    early.best = 0.5
    assert early.improved(0.4999)
    assert EarlyStopping("val_loss", "min", 2, min_delta=0.1).min_delta == 0.1
    assert EarlyStopping("val_loss", "min", 2, state_key="k").state_key == "k"
    assert StopAtTarget("val_acc", "max", 0.9, state_key="t").state_key == "t"


def test_stop_at_target_is_inclusive_and_ignores_a_missing_metric():
    for monitor, mode, value, stops in (("val_acc", "max", 0.9, True), ("val_acc", "max", 0.89, False),
                                        ("val_loss", "min", 0.3, True), ("val_loss", "min", 0.31, False)):
        t = FakeTrainer(epoch=4)
        StopAtTarget(monitor, mode, {"max": 0.9, "min": 0.3}[mode]).on_train_epoch_end(t, {monitor: value})
        assert bool(t.stops) == stops, (monitor, value)
    t = FakeTrainer(epoch=4)
    StopAtTarget("val_acc", "max", 0.9).on_train_epoch_end(t, {"train_acc": 0.99})
    assert t.stops == []
    t = FakeTrainer(epoch=4)
    StopAtTarget("val_acc", "max", 0.9).on_train_epoch_end(t, {"val_acc": 0.95})
    assert t.stops == ["reached val_acc=0.9500 (target 0.9) at epoch 4"]


def test_early_stopping_waits_patience_epochs_after_the_last_improvement():
    def stop_epoch(values, patience=2):
        cb, t = EarlyStopping("val_loss", "min", patience=patience), FakeTrainer()
        for epoch, v in enumerate(values, 1):
            t.epoch = epoch
            cb.on_train_epoch_end(t, {"val_loss": v})
            if t.stops:
                return epoch, t.stops[0]
        return None

    assert stop_epoch([1.0, 0.9, 0.95, 0.96, 0.5]) == (
        4, "early stopping: val_loss did not improve for 2 epochs (best 0.9000)")
    assert stop_epoch([1.0, 1.1, 0.9, 0.95]) is None  # the improvement at epoch 3 restarted the count
    assert stop_epoch([1.0, 1.1, 1.2, 1.3], patience=3) == (4, stop_epoch([1.0, 1.1, 1.2, 1.3], patience=3)[1])


def test_fresh_monitor_state_and_state_written_before_the_keys_existed():
    assert EarlyStopping("val_loss", "min", patience=2).state_dict() == {"best": None, "wait": 0}
    assert ModelCheckpoint("val_loss", "min").state_dict() == {"best": None, "best_epoch": 0}
    again = EarlyStopping("val_loss", "min", patience=2)
    again.load_state_dict(EarlyStopping("val_loss", "min", patience=2).state_dict())
    assert (again.best, again.wait) == (None, 0)
    again.load_state_dict({"best": 0.5})
    assert (again.best, again.wait) == (0.5, 0)
    best = ModelCheckpoint("val_acc", "max")
    best.best, best.best_epoch = 0.8, 4
    other = ModelCheckpoint("val_acc", "max")
    other.load_state_dict(best.state_dict())
    assert (other.best, other.best_epoch) == (0.8, 4)
    other.load_state_dict({"best": 0.7})
    assert (other.best, other.best_epoch) == (0.7, 0)


def test_checkpoint_every_saves_by_step_and_by_time_but_never_an_epochs_last_step():
    from cnnlab.training.callbacks import CheckpointEvery

    with pytest.raises(CnnlabError, match=r"^`callbacks\.checkpoint_every` needs a positive number of steps or "
                                          r"seconds$"):
        CheckpointEvery(steps=-1, seconds=5)
    with pytest.raises(CnnlabError, match="positive number"):
        CheckpointEvery(steps=2, seconds=-1)
    t = FakeTrainer(epoch=1, steps_per_epoch=4)
    cb = CheckpointEvery(steps=1)
    for batch in range(4):
        cb.on_train_batch_end(t, batch, torch.tensor(0.0))
    assert (t.saved, cb.saved) == ([("last", 1)] * 3, 3)  # steps 5, 6, 7; step 8 ends the epoch
    clock = iter([0.0, 0.0, 10.0, 10.0, 19.0]).__next__
    t, cb = FakeTrainer(steps_per_epoch=10), CheckpointEvery(seconds=10, clock=clock)
    cb.on_fit_start(t)
    cb.on_train_batch_end(t, 0, torch.tensor(0.0))  # 10 s after the start: due (the bound is inclusive)
    cb.on_train_batch_end(t, 1, torch.tensor(0.0))  # 9 s after that save: not yet
    assert cb.saved == 1


def test_stall_warning_never_checks_a_single_class_problem():
    lines = []
    cb = StallWarning(lines.append, "x")
    cb.on_fit_start(FakeTrainer(train_data=_labels(6)))  # H = 0: a loss of 0 is learning, not a stall
    cb.on_train_epoch_end(FakeTrainer(epoch=1, model=torch.nn.Flatten(), train_data=_labels(6)),
                          {"train_loss": 0.0, "train_acc": 1.0})
    assert lines == []


def test_stall_warning_defaults_check_step_100_with_a_256_image_probe():
    dead = _labels(150, 150)
    dead.images = torch.ones(300, 1, 1, 2)
    dead.images[256:] = 2.0  # past the probe the images differ: a 256-image probe still sees a constant output
    lines = []
    cb = StallWarning(lines.append, "fix it")
    cb.on_fit_start(FakeTrainer(train_data=dead))
    trainer = FakeTrainer(steps_per_epoch=200, model=torch.nn.Flatten(), train_data=dead)
    cb.on_train_batch_end(trainer, 98, torch.tensor(math.log(2)))  # step 99: not yet
    assert lines == []
    cb.on_train_batch_end(trainer, 99, torch.tensor(math.log(2)))  # step 100 of a 200-step epoch
    assert len(lines) == 1 and "after 100 steps" in lines[0]
