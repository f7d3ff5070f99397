"""Live batch progress of a training run, for readers outside the process (``cnnlab dashboard``).

:class:`RunProgress` writes ``RUN_DIR/progress.json`` a few times a second while an epoch trains, so a
page can show how far the current epoch is before its metrics.jsonl line exists. The file is small and
replaced atomically (:func:`cnnlab.io.write_atomic`): a reader never sees half of it. It also records
when training first started (``started`` in run.json, kept across resumes) and which process trains
(``pid`` and ``host``), so a reader can tell a run that is still training from one whose process died.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch

from cnnlab.errors import CnnlabError
from cnnlab.files import read_text
from cnnlab.io import write_atomic
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.callbacks import Callback
from cnnlab.training.trainer import Trainer

PROGRESS = "progress.json"


class RunProgress(Callback):
    """Writes ``progress.json``: epoch and batch in progress, at most every ``interval`` seconds.

    Fields: ``epoch`` (1-based, the one in progress), ``epochs`` (planned), ``batch`` (optimiser steps done
    in this epoch), ``batches`` (steps per epoch), ``phase`` (``training``, ``validating``, ``epoch done``,
    ``finished``), ``epoch_seconds`` (since the epoch started), ``pid``, ``host``, ``time`` (Unix seconds).

    Args:
        run: the run directory.
        interval: least seconds between two writes within an epoch (each write is one fsync'd file).
        clock: monotonic seconds (injectable for tests).
    """

    order = 65  # after HistoryWriter (60): "epoch done" follows the epoch's metrics.jsonl line

    def __init__(self, run: RunDir, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.interval, self.clock = run, interval, clock
        self._last = float("-inf")
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        if "started" not in self.run.meta:  # a resumed run keeps its first start
            self.run.update_meta(started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._epoch_start = self.clock()
        self._write(trainer, 0, "training")

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self._epoch_start = self.clock()
        self._write(trainer, 0, "training")

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        done = batch + 1
        last = done >= trainer.steps_per_epoch
        if last or self.clock() - self._last >= self.interval:
            self._write(trainer, done, "validating" if last and trainer.validates(trainer.epoch) else "training")

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        # trainer.epoch already counts this epoch: report it, not the next one
        self._write(trainer, trainer.steps_per_epoch, "epoch done", epoch=trainer.epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._write(trainer, trainer.steps_per_epoch, "finished", epoch=max(trainer.epoch, 1))

    def _write(self, trainer: Trainer, batch: int, phase: str, epoch: int | None = None) -> None:
        now = self.clock()
        self._last = now
        state = {"epoch": epoch if epoch is not None else trainer.epoch + 1, "epochs": trainer.epochs,
                 "batch": batch, "batches": trainer.steps_per_epoch, "phase": phase,
                 "epoch_seconds": round(now - self._epoch_start, 3), "pid": os.getpid(),
                 "host": socket.gethostname(), "time": round(time.time(), 3)}
        write_atomic(self.run.file(PROGRESS), json.dumps(state) + "\n")


def read_progress(run: RunDir) -> dict[str, Any] | None:
    """progress.json of ``run``, or None when there is none or it cannot be read (it is only a hint)."""
    try:
        data = json.loads(read_text(run.file(PROGRESS)))  # never blocks on a FIFO
    except (OSError, ValueError, RecursionError, CnnlabError):
        return None
    return data if isinstance(data, dict) else None


def trainer_alive(progress: dict[str, Any] | None) -> bool | None:
    """Whether the process that wrote ``progress`` still runs: None when that cannot be told (another
    host, no pid), else True/False. A recycled pid can make a dead run look alive; never the reverse."""
    if not progress or progress.get("host") != socket.gethostname() or not isinstance(progress.get("pid"), int):
        return None
    try:
        os.kill(progress["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
