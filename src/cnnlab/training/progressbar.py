"""Keras-style training output: a live bar per epoch on a terminal or in Jupyter, and one line per epoch."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.training.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.training.trainer import Trainer


def format_epoch(epoch: int, epochs: int, m: dict[str, Any]) -> str:
    """Keras's epoch line: ``Epoch 3/5 - 4.1s - loss 0.2557 - acc 0.9052 - val_loss 0.2639 - val_acc 0.9047``."""
    parts = [f"Epoch {epoch}/{epochs}", f"{m['seconds']:.1f}s", f"loss {m['train_loss']:.4f}", f"acc {m['train_acc']:.4f}"]
    if m.get("val_loss") is not None:
        parts += [f"val_loss {m['val_loss']:.4f}", f"val_acc {m['val_acc']:.4f}"]
    return " - ".join(parts)


class ProgressBar(Callback):
    """Keras-style output: a live bar per epoch on a terminal or in Jupyter, and one line per epoch.

    ``live`` None decides by the stream: a terminal, or a Jupyter kernel's stdout (rich draws its bar as a
    notebook widget there); otherwise only the epoch lines are written. The epoch lines go to ``log``
    (default: printed on the stream).
    """

    order = 100

    def __init__(self, stream=None, live: bool | None = None, log: Callable[[str], None] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live = _interactive(self.stream) if live is None else live
        self.log = log or (lambda line: print(line, file=self.stream, flush=True))
        self._bar = None
        self._last = 0.0

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        if not self.live:
            return
        from rich.console import Console  # only live bars pay for rich's import
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

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._close()
        self.log(format_epoch(trainer.epoch, trainer.epochs, logs))

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _interactive(stream) -> bool:
    """A terminal, or the stdout of a Jupyter kernel (where rich renders live widgets)."""
    if getattr(stream, "isatty", lambda: False)():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell" and stream is sys.stdout
