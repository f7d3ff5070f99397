"""A run's per-epoch history: written after every epoch, and the one definition of its best epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cnnlab.runs.run_dir import RunDir
from cnnlab.training.callbacks import Callback, is_improvement, metric_name, resolve_mode
from cnnlab.training.trainer import Trainer


class HistoryWriter(Callback):
    """Rewrites metrics.jsonl / history.csv after every epoch (after the checkpoint of that epoch)."""

    order = 60

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self.run.write_history(trainer.history)


def best_epoch(history: Sequence[dict[str, Any]], monitor: str = "val_loss", mode: str = "auto",
               min_delta: float = 0.0) -> dict[str, Any] | None:
    """The epoch whose weights ``checkpoints/best`` holds: the first strict improvement that no later beat.

    The same rule as :class:`~cnnlab.training.callbacks.ModelCheckpoint` (via
    :func:`~cnnlab.training.callbacks.is_improvement`): among equal values the earliest epoch wins, and
    missing or non-finite values never count.

    Args:
        history: metrics.jsonl rows in epoch order.
        monitor: the metric (``val_loss``, ``val_acc``, ``loss``, ``acc``).
        mode: ``min``, ``max`` or ``auto`` (from the metric).
        min_delta: smallest change that counts as an improvement.

    Returns:
        That epoch's row, or None when no row has a finite value of ``monitor``.
    """
    key, direction = metric_name(monitor), resolve_mode(monitor, mode)
    best, row = None, None
    for h in history:
        value = h.get(key)
        if value is not None and is_improvement(value, best, direction, min_delta):
            best, row = value, h
    return row


def run_best_epoch(meta: dict[str, Any], history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`best_epoch` of a run, by the monitor, mode and min_delta its run.json records (what its
    ``checkpoints/best`` was chosen by)."""
    return best_epoch(history, meta.get("monitor", "val_loss"), meta.get("mode", "auto"), meta.get("min_delta", 0.0))
