"""The experiment: a config trained into a complete run directory, stops, resumes (also after a SIGKILL)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import build_callbacks, save_weights, train
from cnnlab.runs.options import experiment_config
from cnnlab.training.callbacks import EarlyStopping, ModelCheckpoint, NanGuard, ProgressBar, StopAtTarget


def quiet(cfg, **kwargs):
    return train(cfg, progress=False, log=lambda s: None, **kwargs)


def test_train_writes_a_complete_run_directory(dnn_run):
    names = {p.name for p in dnn_run.iterdir()}
    assert {"config.yaml", "run.json", "metrics.jsonl", "history.csv", "summary.txt", "results.json",
            "model.safetensors", "checkpoints"} <= names
    rows = [json.loads(line) for line in (dnn_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"} <= set(rows[0])
    assert (dnn_run / "history.csv").read_text().splitlines()[0] == "epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr"
    for kind in ("last", "best"):
        assert (dnn_run / "checkpoints" / kind / "model.safetensors").is_file()
    cfg = load_config(dnn_run / "config.yaml")
    assert cfg.model.name == "dnn_128" and cfg.train.epochs == 2
    assert "Total params: 101,770" in (dnn_run / "summary.txt").read_text()
    assert json.loads((dnn_run / "results.json").read_text())["test_acc"] > 0.6


def test_run_json_records_the_finished_run(dnn_run):
    meta = json.loads((dnn_run / "run.json").read_text())
    assert meta["status"] == "done" and meta["epochs"] == 2 and meta["epochs_planned"] == 2
    assert meta["dataset"] == "fashion-mnist-sample" and meta["input_shape"] == [1, 28, 28]
    assert len(meta["classes"]) == 10 and meta["params"] == 101_770
    assert meta["normalizer"] == {"mean": [0.0], "std": [1.0]}  # plain x / 255, as the tutorials
    assert meta["test_acc"] == json.loads((dnn_run / "results.json").read_text())["test_acc"]
    assert (meta["model"], meta["model_layers"], meta["min_delta"]) == ("dnn_128", 0, 0.0)  # for a runs table


def test_stop_at_ends_training_early(tmp_path):
    lines: list[str] = []
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=5, batch_size=256,
                            stop_at=["loss=10"])
    result = train(cfg, out=tmp_path / "r", progress=False, log=lines.append)
    assert result.stop_reason.startswith("reached train_loss") and result.failed is None
    assert any(line.startswith("Stopped early: reached train_loss") for line in lines)
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "r" / "run.json").read_text())["stop_reason"] == result.stop_reason


def test_resume_with_more_epochs_extends_a_run(dnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    result = quiet(experiment_config(run / "config.yaml", epochs=3), resume=run)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_resume_needs_a_checkpoint(dnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(CnnlabError, match="has no checkpoint to resume from"):
        quiet(load_config(run / "config.yaml"), resume=run)


def test_callbacks_follow_the_config():
    cfg = load_config(None, [("callbacks.stop_at", ["val_acc=0.9"]), ("callbacks.early_stopping", 3),
                             ("callbacks.monitor", "val_acc")])
    callbacks = build_callbacks(cfg, progress=False)
    assert [type(cb) for cb in callbacks] == [NanGuard, StopAtTarget, EarlyStopping, ModelCheckpoint, ProgressBar]
    stop, early, checkpoint = callbacks[1:4]
    assert (stop.monitor, stop.mode, stop.target) == ("val_acc", "max", 0.9)
    assert (early.monitor, early.mode, early.patience) == ("val_acc", "max", 3)
    assert (checkpoint.monitor, checkpoint.mode) == ("val_acc", "max")
    assert not callbacks[-1].live
    plain = build_callbacks(load_config())
    assert [type(cb) for cb in plain] == [NanGuard, ModelCheckpoint, ProgressBar]
    assert (plain[1].monitor, plain[1].mode) == ("val_loss", "min")


def test_save_weights_round_trips_the_state_dict(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    save_weights(model, tmp_path / "w.safetensors")
    back = load_file(tmp_path / "w.safetensors")
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left


# ----------------------------------------------------------------------- killed in epoch 2, then resumed

# fp32 on the CPU is deterministic: a resumed run must then equal an uninterrupted one bit for bit
OPTIONS = {"dataset": "fashion-mnist-sample", "model": "cnn_32_64", "epochs": 3, "batch_size": 64, "precision": "fp32"}
TRAIN_SCRIPT = ("import sys\nfrom cnnlab.runs.experiment import train\nfrom cnnlab.runs.options import experiment_config\n"
                f"train(experiment_config(**{OPTIONS!r}), out=sys.argv[1], progress=False, log=lambda s: None)\n")


def _epochs(run):
    f = run / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


@pytest.mark.slow
def test_sigkill_in_epoch_2_then_resume(tmp_path):
    """A run killed with SIGKILL during epoch 2 of 3 and resumed ends like an uninterrupted run."""
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while len(_epochs(run)) < 1:  # epoch 1 is on disk (checkpoint, then metrics): epoch 2 is running
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(_epochs(run)) == 1, "the run got past epoch 2 before the kill; the test needs a slower epoch"
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    assert quiet(experiment_config(run / "config.yaml"), resume=run).failed is None
    resumed = _epochs(run)
    assert [m["epoch"] for m in resumed] == [1, 2, 3]

    clean = tmp_path / "clean"
    assert quiet(experiment_config(**OPTIONS), out=clean).failed is None
    straight = _epochs(clean)
    # Same seed, data order, RNG and optimiser state (in its parameters' channels-last layout): identical.
    drop = ("seconds",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in resumed] == [
        {k: v for k, v in m.items() if k not in drop} for m in straight]
    assert (run / "model.safetensors").read_bytes() == (clean / "model.safetensors").read_bytes()
    assert json.loads((run / "results.json").read_text()) == json.loads((clean / "results.json").read_text())
    assert json.loads((run / "run.json").read_text())["status"] == "done"
