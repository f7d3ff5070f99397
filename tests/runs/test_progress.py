"""progress.json: live batch progress written by a callback, throttled, atomic, and the first start time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer
from cnnlab.models.spec import build_spec
from cnnlab.runs.history import HistoryWriter
from cnnlab.runs.progress import PROGRESS, RunProgress, read_progress, trainer_alive
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.engine import Engine
from cnnlab.training.trainer import Trainer

LAYERS = [{"type": "Flatten"}, {"type": "Dense", "units": "num_classes"}]


class Recorder(RunProgress):
    """Keeps every state it wrote, read back from the file (what a reader would see)."""

    def __init__(self, run, **kw):
        super().__init__(run, **kw)
        self.seen: list[dict] = []

    def _write(self, trainer, batch, phase, epoch=None):
        super()._write(trainer, batch, phase, epoch)
        self.seen.append(read_progress(self.run))


def _fit(toy, run, cb, epochs=2, validation_freq=1):
    torch.manual_seed(0)
    model = build_spec(LAYERS, input_shape=toy.shape, num_classes=3)
    # 240 images at batch 64: 4 steps per epoch (the last one 48 images)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.01, optimizer="sgd", validation_freq=validation_freq)
    trainer = Trainer(model, cfg, train_data=toy,
                      val_data=toy, normalizer=Normalizer(), engine=Engine(torch.device("cpu"), None, False),
                      callbacks=[HistoryWriter(run), cb])
    trainer.fit()
    return trainer


def test_every_batch_is_written_when_the_interval_allows(toy, tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.update_meta(status="running")
    cb = Recorder(run, interval=0.0)
    _fit(toy, run, cb)
    steps = [(s["epoch"], s["batch"], s["phase"]) for s in cb.seen]
    epoch = [(1, 0, "training"), (1, 1, "training"), (1, 2, "training"), (1, 3, "training"), (1, 4, "validating"),
             (1, 4, "epoch done")]
    assert steps == [(1, 0, "training"), *epoch, *[(2, b, p) for _, b, p in epoch], (2, 4, "finished")]
    assert {s["batches"] for s in cb.seen} == {4} and {s["epochs"] for s in cb.seen} == {2}
    assert cb.seen[-1]["pid"] > 0 and cb.seen[-1]["host"] == socket.gethostname()
    assert not list(run.path.glob(".progress.json.*"))  # atomic writes leave no temporary file behind


def test_an_epoch_that_does_not_validate_never_says_validating(toy, tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.update_meta(status="running")
    cb = Recorder(run, interval=10.0, clock=lambda: 100.0)  # only the forced writes
    _fit(toy, run, cb, epochs=3, validation_freq=2)  # validates after epochs 2 and 3
    ends = [(s["epoch"], s["phase"]) for s in cb.seen if s["batch"] == 4 and s["phase"] != "epoch done"]
    assert ends == [(1, "training"), (2, "validating"), (3, "validating"), (3, "finished")]


def test_writes_within_an_epoch_are_throttled(toy, tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.update_meta(status="running")
    cb = Recorder(run, interval=10.0, clock=lambda: 100.0)  # time stands still: only the forced writes happen
    _fit(toy, run, cb, epochs=1)
    assert [(s["batch"], s["phase"]) for s in cb.seen] == [(0, "training"), (0, "training"), (4, "validating"),
                                                            (4, "epoch done"), (4, "finished")]


def test_the_first_start_is_kept_across_a_resume(toy, tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.update_meta(status="running", started="2020-01-02T03:04:05")
    _fit(toy, run, RunProgress(run), epochs=1)
    assert run.meta["started"] == "2020-01-02T03:04:05"
    fresh = RunDir.create(tmp_path / "fresh")
    fresh.update_meta(status="running")
    _fit(toy, fresh, RunProgress(fresh), epochs=1)
    assert len(fresh.meta["started"]) == 19  # YYYY-MM-DDTHH:MM:SS, set once when training first started


def test_cnnlab_train_writes_progress(dnn_run):
    state = json.loads((dnn_run / PROGRESS).read_text())
    assert (state["epoch"], state["epochs"], state["phase"]) == (2, 2, "finished")
    assert state["batch"] == state["batches"] == 24  # 6,000 sample images at batch 256 (23 full + 1 of 112)
    assert "started" in json.loads((dnn_run / "run.json").read_text())


def test_a_missing_or_damaged_file_reads_as_none(tmp_path):
    run = RunDir(tmp_path)
    assert read_progress(run) is None
    (tmp_path / PROGRESS).write_text("{half")
    assert read_progress(run) is None
    (tmp_path / PROGRESS).write_text("[1, 2]")
    assert read_progress(run) is None


def test_trainer_alive_tells_a_dead_process_from_a_live_one():
    here = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert trainer_alive({"pid": dead.pid, "host": here}) is False
    assert trainer_alive({"pid": os.getpid(), "host": here}) is True
    assert trainer_alive({"pid": 1, "host": "another-machine"}) is None
    assert trainer_alive({"host": here}) is None and trainer_alive(None) is None
