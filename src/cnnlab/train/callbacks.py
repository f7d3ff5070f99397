"""Training callbacks: Lightning-style hooks; stopping goes through ``trainer.should_stop``.

Stateful callbacks implement ``state_dict`` / ``load_state_dict`` so a resumed run continues with the
same patience counters and best values.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.errors import CnnlabError

if TYPE_CHECKING:
    from cnnlab.train.trainer import Trainer

# Metric names a user may write (Keras's logs keys) → the names in metrics.jsonl.
ALIASES = {"loss": "train_loss", "acc": "train_acc", "accuracy": "train_acc", "val_accuracy": "val_acc"}
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def metric_name(name: str) -> str:
    """Canonical metric name for ``name`` (``loss`` → ``train_loss``); unknown names are an error."""
    key = ALIASES.get(name.strip(), name.strip())
    if key not in METRICS:
        raise CnnlabError(f"unknown metric {name!r}; valid: loss, acc, val_loss, val_acc")
    return key


def higher_is_better(metric: str) -> bool:
    return metric.endswith("acc")


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (also when resuming)."""

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        """Called before each training epoch."""

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        """Called after each optimiser step with the batch's loss tensor (don't sync it every step)."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Called once the epoch's train and validation metrics are complete."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once after the last epoch, also after a stop."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints (stateless callbacks return {})."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""


class NanGuard(Callback):
    """Stops when the training loss is NaN/inf, before that epoch is checkpointed (the last good one stays)."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not math.isfinite(metrics["train_loss"]):
            trainer.should_stop = True
            kept = f"kept the checkpoint of epoch {trainer.epoch - 1}" if trainer.epoch > 1 else "no epoch finished cleanly"
            trainer.failed = (f"training loss became {metrics['train_loss']} in epoch {trainer.epoch}; stopped and {kept} "
                              "(lower train.lr, add warm-up, or check the data)")


class StopAtTarget(Callback):
    """Stops once any target is reached: accuracies at ≥ value, losses at ≤ value (the first tutorial's exercise)."""

    def __init__(self, targets: list[tuple[str, float]]) -> None:
        self.targets = targets

    @classmethod
    def parse(cls, items: tuple[str, ...] | list[str]) -> StopAtTarget:
        """From ``["val_acc=0.91", "loss=0.3"]``."""
        targets = []
        for item in items:
            name, sep, value = item.partition("=")
            try:
                targets.append((metric_name(name), float(value)))
            except ValueError:
                raise CnnlabError(f"--stop-at {item!r}: expected METRIC=VALUE like val_acc=0.91 or loss=0.3") from None
            if not sep:
                raise CnnlabError(f"--stop-at {item!r}: expected METRIC=VALUE like val_acc=0.91 or loss=0.3")
        return cls(targets)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        for name, target in self.targets:
            value = metrics.get(name)
            if value is None:
                continue
            if (value >= target) if higher_is_better(name) else (value <= target):
                trainer.should_stop = True
                trainer.stop_reason = f"reached {name}={value:.4f} (target {target:g}) at epoch {trainer.epoch}"
                return


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without an improvement of ``monitor`` by more than ``min_delta``."""

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        better = self.best is None or (
            value > self.best + self.min_delta if higher_is_better(self.monitor) else value < self.best - self.min_delta)
        if better:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.should_stop = True
            trainer.stop_reason = (f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                                   f"(best {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))


class ModelCheckpoint(Callback):
    """Saves ``last`` every epoch and ``best`` when ``monitor`` improves (skips an epoch that failed)."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.failed:
            return
        value = metrics.get(self.monitor)
        improved = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best if higher_is_better(self.monitor) else value < self.best))
        if improved:
            self.best, self.best_epoch = value, trainer.epoch
        trainer.save_checkpoint("last")
        if improved:
            trainer.save_checkpoint("best")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), int(state.get("best_epoch", 0))


def format_epoch(epoch: int, epochs: int, m: dict[str, Any]) -> str:
    """Keras's epoch line: ``Epoch 3/5 - 4.1s - loss 0.2557 - acc 0.9052 - val_loss 0.2639 - val_acc 0.9047``."""
    parts = [f"Epoch {epoch}/{epochs}", f"{m['seconds']:.1f}s", f"loss {m['train_loss']:.4f}", f"acc {m['train_acc']:.4f}"]
    if m.get("val_loss") is not None:
        parts += [f"val_loss {m['val_loss']:.4f}", f"val_acc {m['val_acc']:.4f}"]
    return " - ".join(parts)


class ProgressBar(Callback):
    """Keras-style output: a live bar per epoch on a terminal, and one line per epoch (plain when not a tty)."""

    def __init__(self, stream=None, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._bar = None
        self._last = 0.0

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if not self.live:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(f"Epoch {trainer.epoch + 1}/{trainer.epochs}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                             console=Console(file=self.stream), transient=True)
        self._bar.start()
        self._task = self._bar.add_task("train", total=trainer.steps_per_epoch, loss="")

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        if now - self._last > 0.2 or batch + 1 == trainer.steps_per_epoch:  # redraw ≤ 5×/s; the sync is cheap then
            self._last = now
            self._bar.update(self._task, completed=batch + 1, loss=f"loss {float(loss):.4f}")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        print(format_epoch(trainer.epoch, trainer.epochs, metrics), file=self.stream, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
