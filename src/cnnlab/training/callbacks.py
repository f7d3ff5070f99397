"""Training callbacks: Keras's and Lightning's protocol, with a declared order and no flag strings.

A :class:`Callback` overrides any of the paired hooks ``on_fit_start``/``on_fit_end``,
``on_train_epoch_start``/``on_train_epoch_end`` and ``on_train_batch_start``/``on_train_batch_end``.
The trainer sorts its callbacks by their ``order`` class attribute (lower first; equal orders keep the
given order) and calls each hook the same way. A callback ends training in one of two ways:

* :meth:`Trainer.request_stop(reason) <cnnlab.training.trainer.Trainer.request_stop>`: training stops
  after the current epoch, once every callback has seen it (requests only accumulate: OR, never undone);
* raising :class:`StopTraining`: with ``failed=True`` (as :class:`NanGuard` does) training stops at once and
  the epoch in progress is neither recorded nor checkpointed; without it, from ``on_train_epoch_end`` it is a
  stop request (the epoch is recorded and checkpointed by the callbacks after it), and from a batch hook
  training stops after that step, with a checkpoint of the position reached.

Stateful callbacks implement ``state_dict``/``load_state_dict``; checkpoints keep that state under each
instance's ``state_key``, so two instances of one class keep theirs apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.training.trainer import Trainer

# Metric names a user may write (Keras's logs keys) → the names in metrics.jsonl.
ALIASES = {"loss": "train_loss", "acc": "train_acc", "accuracy": "train_acc", "val_accuracy": "val_acc"}
# The direction in which each metric improves: the one table that ``auto`` modes are resolved from.
METRIC_MODES = {"train_loss": "min", "train_acc": "max", "val_loss": "min", "val_acc": "max"}
MODES = ("min", "max")


def metric_name(name: str) -> str:
    """Canonical metric name for ``name`` (``loss`` → ``train_loss``); unknown names are an error."""
    key = ALIASES.get(name.strip(), name.strip())
    if key not in METRIC_MODES:
        raise CnnlabError(f"unknown metric {name!r}; valid: loss, acc, val_loss, val_acc")
    return key


def resolve_mode(metric: str, mode: str = "auto") -> str:
    """``min`` or ``max`` for ``metric``; ``auto`` looks the metric up in :data:`METRIC_MODES` (Keras's auto)."""
    if mode == "auto":
        return METRIC_MODES[metric_name(metric)]
    if mode not in MODES:
        raise CnnlabError(f"callbacks.mode: {mode!r} is not one of auto, min, max")
    return mode


def is_improvement(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode`` (ties do not).

    This is the one definition of "better" behind early stopping, the best checkpoint and
    :func:`cnnlab.runs.history.best_epoch`.
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class StopTraining(Exception):  # noqa: N818 - Keras-style name for a control-flow signal
    """Raised by a callback to end training (see the module's notes for what happens to the epoch in progress).

    Attributes:
        reason: one line for the user.
        failed: the run failed (e.g. diverged) rather than stopped early.
    """

    def __init__(self, reason: str, *, failed: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.failed = reason, failed


class Callback:
    """Base class: every hook does nothing.

    Attributes:
        order: position among the trainer's callbacks, lower first (guards -100, transfer -50, plain 0,
            checkpoints 50, writers 60, output 100).
    """

    order: int = 0

    @property
    def state_key(self) -> str:
        """Key of this instance's state in a checkpoint (unique among the trainer's callbacks)."""
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (also when resuming)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once after the last epoch, also after a stop or a failure."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Called before each training epoch."""

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        """Called once the epoch's train and validation metrics (``logs``) are complete."""

    def on_train_batch_start(self, trainer: Trainer, batch: int) -> None:
        """Called before each optimiser step."""

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        """Called after each optimiser step with the batch's loss tensor (don't sync it every step)."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints (stateless callbacks return {})."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


HOOKS = ("on_fit_start", "on_fit_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
         "on_train_batch_end")


def overrides(cb: Callback, hook: str) -> bool:
    """Whether ``cb`` implements ``hook`` (the trainer calls per-step hooks only on those that do)."""
    return getattr(type(cb), hook) is not getattr(Callback, hook)


class NanGuard(Callback):
    """Fails the run when the training loss or any weight is NaN/inf, before that epoch is checkpointed."""

    order = -100

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        loss = logs["train_loss"]
        bad = None if math.isfinite(loss) else f"training loss became {loss}"
        if bad is None and not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()):
            bad = "a weight became NaN or infinite"
        if bad is not None:
            done = trainer.epoch - 1
            kept = f"kept the checkpoint of epoch {done}" if done > 0 else "no epoch finished cleanly"
            raise StopTraining(f"{bad} in epoch {trainer.epoch}; stopped and {kept} "
                               "(lower train.lr, add warm-up, or check the data)", failed=True)


class StallWarning(Callback):
    """Says, in one line and once, when training is stuck at chance early on, naming the likely cause and fix.

    A network whose output no longer depends on its input (every ReLU dead after too large a step) can only
    learn the class frequencies: its loss sits at their entropy H (ln C for balanced classes) and its
    accuracy at chance, epoch after epoch, without an error. Checked after ``check_step`` steps of a long
    first epoch (batch loss within ``tol`` of H, identical logits for every image of a probe batch) and
    after epoch 1 (loss within ``tol`` of H, accuracy within 2 points of chance: a collapse, or nothing
    learned yet). It only warns; training goes on.

    Args:
        log: receives the warning line.
        advice: the fix for a collapse, from the caller who knows the model (lower rate, BN variant, ...).
        check_step: the optimiser step of the early check (only in epochs of at least twice as many steps).
        tol: relative distance from H that counts as "at H".
        probe: images in the probe batch.
    """

    order = 110  # after the progress bar's epoch line

    def __init__(self, log, advice: str, *, check_step: int = 100, tol: float = 0.02, probe: int = 256) -> None:
        self.log, self.advice, self.check_step, self.tol, self.probe = log, advice, check_step, tol, probe
        self.done, self.balanced = False, True
        self.entropy, self.majority, self.classes = math.log(2), 0.5, 2

    def on_fit_start(self, trainer: Trainer) -> None:
        data = trainer.train_data
        counts = torch.bincount(data.labels.cpu(), minlength=data.num_classes).double()
        p = counts[counts > 0] / counts.sum()
        self.entropy, self.majority, self.classes = float(-(p * p.log()).sum()), float(p.max()), data.num_classes
        self.balanced = self.entropy >= 0.995 * math.log(max(self.classes, 2))  # near-even classes: "≈ ln C"
        self.done = trainer.epoch > 0 or self.entropy <= 0  # a resumed run is past the point of this check

    def _at_entropy(self, loss: float) -> bool:
        return abs(loss - self.entropy) <= self.tol * self.entropy

    def constant_output(self, trainer: Trainer) -> bool:
        """Whether the model gives the same logits for every image of a probe batch (fp32, inference mode)."""
        data = trainer.val_data if trainer.val_data is not None else trainer.train_data
        model = trainer.model
        modes = [m.training for m in model.modules()]  # restored one by one: a frozen backbone's BN stays in eval
        model.eval()
        try:
            with torch.inference_mode():
                x = trainer.normalizer(data.images[: self.probe].to(trainer.engine.device), trainer.engine.channels_last)
                logits = model(x).float()
        finally:
            for m, mode in zip(model.modules(), modes, strict=True):
                m.training = mode
        spread = float((logits - logits[:1]).abs().max())
        return len(logits) > 1 and spread <= 1e-4 * (1.0 + float(logits.abs().max()))

    def _warn(self, trainer: Trainer, where: str, loss: float, acc: float | None, constant: bool) -> None:
        self.done = True
        h = (f"ln {self.classes} = {math.log(self.classes):.4f}" if self.balanced else
             f"the label entropy {self.entropy:.4f}")
        accuracy = f", accuracy {acc:.3f} ≈ chance" if acc is not None else ""
        if constant:
            self.log(f"warning: the model's output no longer depends on its input ({where}: loss {loss:.4f} ≈ {h}"
                     f"{accuracy}); training has collapsed, most likely because the learning rate {trainer.lr:g} "
                     f"is too high for this network: {self.advice}")
        else:
            self.log(f"warning: {where} the loss is {loss:.4f} ≈ {h}{accuracy}: the model has learned nothing yet; "
                     f"check the labels and the learning rate {trainer.lr:g} (an LR range test, cnnlab lr-find, "
                     "shows where it learns)")

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        if (self.done or trainer.epoch > 0 or batch + 1 != self.check_step
                or trainer.steps_per_epoch < 2 * self.check_step):
            return
        value = float(loss)  # one sync, once per run
        if self._at_entropy(value) and self.constant_output(trainer):
            self._warn(trainer, f"after {self.check_step} steps", value, None, constant=True)

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.done or trainer.epoch != 1:
            return
        self.done = True
        val = logs.get("val_loss") is not None
        loss = logs["val_loss"] if val else logs["train_loss"]
        acc = logs["val_acc"] if val else logs["train_acc"]
        if loss is None or not math.isfinite(loss) or not self._at_entropy(loss) or acc > self.majority + 0.02:
            return
        self._warn(trainer, "after epoch 1", loss, acc, self.constant_output(trainer))


class MonitorCallback(Callback):
    """Watches one metric in an explicit direction: ``mode`` ``min`` (losses) or ``max`` (accuracies).

    Args:
        monitor: a metric name (``val_loss``, ``val_acc``, ``loss``, ``acc``).
        mode: ``min`` or ``max``; ``auto`` (Keras's default) is resolved here, once, from the metric.
        min_delta: smallest change that counts as an improvement.
        state_key: key of this instance's checkpoint state (default ``ClassName:monitor``).
    """

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0, *, state_key: str | None = None) -> None:
        if mode not in (*MODES, "auto"):
            raise CnnlabError(f"`mode` {mode!r} is not one of min, max, auto")
        self.monitor, self.mode, self.min_delta = metric_name(monitor), resolve_mode(monitor, mode), min_delta
        self._state_key = state_key
        self.best: float | None = None

    @property
    def state_key(self) -> str:
        return self._state_key or f"{type(self).__name__}:{self.monitor}"

    def current(self, logs: dict[str, Any]) -> float | None:
        """The monitored value in ``logs``, or None when it is missing or not finite."""
        value = logs.get(self.monitor)
        return value if value is not None and math.isfinite(value) else None

    def improved(self, value: float) -> bool:
        """Whether ``value`` improves on the best seen so far (see :func:`is_improvement`)."""
        return is_improvement(value, self.best, self.mode, self.min_delta)


class StopAtTarget(MonitorCallback):
    """Requests a stop once ``monitor`` reaches ``target``: ≥ in ``max`` mode, ≤ in ``min`` mode.

    The first tutorial's exercise: stop at 91% training accuracy.
    """

    def __init__(self, monitor: str, mode: str, target: float, *, state_key: str | None = None) -> None:
        super().__init__(monitor, mode, state_key=state_key)
        self.target = target

    @classmethod
    def parse(cls, item: str) -> StopAtTarget:
        """From ``"val_acc=0.91"`` (the direction comes from :data:`METRIC_MODES`)."""
        name, sep, value = item.partition("=")
        try:
            metric, target = metric_name(name), float(value)
        except ValueError:
            sep = ""
        except CnnlabError as exc:
            raise CnnlabError(f"`callbacks.stop_at` {item!r}: {exc}") from None
        if not sep:
            raise CnnlabError(f"`callbacks.stop_at` {item!r}: expected METRIC=VALUE like val_acc=0.91 or loss=0.3")
        return cls(metric, METRIC_MODES[metric], target)

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        if value is not None and (value >= self.target if self.mode == "max" else value <= self.target):
            trainer.request_stop(f"reached {self.monitor}={value:.4f} (target {self.target:g}) at epoch {trainer.epoch}")


class EarlyStopping(MonitorCallback):
    """Requests a stop after ``patience`` epochs without an improvement of ``monitor`` by more than ``min_delta``."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0, *,
                 state_key: str | None = None) -> None:
        super().__init__(monitor, mode, min_delta, state_key=state_key)
        self.patience = patience
        self.wait = 0

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        if value is None:
            return
        if self.improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.request_stop(f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                                 f"(best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


class ModelCheckpoint(MonitorCallback):
    """Saves ``checkpoints/last`` every epoch and ``checkpoints/best`` when ``monitor`` improves."""

    order = 50

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0, *, state_key: str | None = None) -> None:
        super().__init__(monitor, mode, min_delta, state_key=state_key)
        self.best_epoch = 0

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        value = self.current(logs)
        improved = value is not None and self.improved(value)
        if improved:
            self.best, self.best_epoch = value, trainer.epoch
        trainer.save_checkpoint("last")
        if improved:
            trainer.save_checkpoint("best")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), int(state.get("best_epoch", 0))


class CheckpointEvery(Callback):
    """Saves ``checkpoints/last`` part-way through an epoch, with the position in its data order (Keras's
    ``BackupAndRestore(save_freq=...)``), so that a killed run loses at most this much work.

    Args:
        steps: save after every global step that is a multiple of ``steps`` (0: not by steps). Counted
            from the run's first step, so a resumed run saves at the same steps as an uninterrupted one.
        seconds: save once this much time has passed since the last checkpoint of either kind (0: not by
            time); an epoch shorter than that only gets its end-of-epoch checkpoint.
        clock: seconds, monotonic (tests pass a fake one).

    An epoch's last step is never saved here: :class:`ModelCheckpoint` saves the finished epoch just after.
    """

    order = 50

    def __init__(self, steps: int = 0, seconds: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if steps < 0 or seconds < 0 or not (steps or seconds):
            raise CnnlabError("`callbacks.checkpoint_every` needs a positive number of steps or seconds")
        self.steps, self.seconds, self.clock = int(steps), float(seconds), clock
        self.saved = 0  # part-way checkpoints written by this instance
        self._since = clock()

    def on_fit_start(self, trainer: Trainer) -> None:
        self._since = self.clock()

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        if trainer.progress is None or batch + 1 >= trainer.steps_per_epoch:
            return
        step = trainer.epoch * trainer.steps_per_epoch + batch + 1
        due = (self.steps and step % self.steps == 0) or (self.seconds and self.clock() - self._since >= self.seconds)
        if due:
            trainer.save_checkpoint("last")
            self.saved += 1
            self._since = self.clock()

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._since = self.clock()  # the epoch's end is checkpointed (ModelCheckpoint)
