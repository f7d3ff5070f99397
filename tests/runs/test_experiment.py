"""The experiment: a config trained into a complete run directory, stops, resumes (also after a SIGKILL)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import save_weights, train
from cnnlab.runs.options import experiment_config
from cnnlab.runs.setup import build_callbacks
from cnnlab.training.callbacks import (
    Callback,
)


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
    # measured 0.778 (2 epochs of dnn_128 on the 6,000-image sample); a broken step stays near 0.1
    assert json.loads((dnn_run / "results.json").read_text())["test_acc"] >= 0.76


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


def test_a_mistake_found_before_training_leaves_no_run_folder(tmp_path, image_folder):
    # layer-list models have no input size of their own: a folder needs data.image_size, found only after the
    # config is read and the data is looked at; the run folder must not be left behind
    cfg = experiment_config(dataset=f"folder:{image_folder}", overrides=[("model.layers", [
        {"type": "Flatten"}, {"type": "Dense", "units": "num_classes"}])])
    with pytest.raises(CnnlabError, match="folder datasets need `data.image_size`"):
        quiet(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128",
                            overrides=[("data.augment.cutout", 20)])
    with pytest.raises(CnnlabError, match="data.augment.cutout=20 on 28x28"):
        quiet(cfg)  # the default runs/<name> folder
    assert not (Path.cwd() / "runs").exists()


class _Boom(Callback):
    """A callback that raises at a given optimiser step of a given epoch (as a crash or Ctrl-C would)."""

    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    def on_train_batch_start(self, trainer, batch):
        if trainer.epoch + 1 == self.epoch and batch == 2:
            raise self.error


def test_a_crash_before_the_first_epoch_ends_leaves_nothing(tmp_path, monkeypatch):
    import cnnlab.runs.experiment as experiment

    def with_boom(epoch, error):
        monkeypatch.setattr(experiment, "build_callbacks", lambda cfg, progress=None, log=print, run=None: [
            *build_callbacks(cfg, progress, log, run), _Boom(epoch, error)])

    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=2, batch_size=256)
    with_boom(1, RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        quiet(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the corrected command can use the same --out
    (tmp_path / "mine").mkdir()
    with_boom(1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        quiet(cfg, out=tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())  # the user's folder stays
    with_boom(2, RuntimeError("disk full"))  # after a finished epoch the run is kept, resumable, and says why
    with pytest.raises(RuntimeError):
        quiet(cfg, out=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and meta["failure"] == "RuntimeError: disk full"
    assert (tmp_path / "run" / "checkpoints" / "last").is_dir()


def test_a_resume_records_what_it_changed_and_uses_the_replanned_rate(tmp_path):
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=2, batch_size=512,
                            precision="fp32", overrides=[("train.schedule", "onecycle")])
    run = tmp_path / "run"
    quiet(cfg, out=run)
    lines: list[str] = []
    from cnnlab.runs.options import resume_config

    longer = resume_config(run, epochs=4, lr=0.002)
    assert train(longer, resume=run, progress=False, log=lines.append).failed is None
    meta = json.loads((run / "run.json").read_text())
    assert meta["config_changes"] == [{"after_epoch": 2, "changed": {"train.epochs": [2, 4], "train.lr": [0.001,
                                                                                                        0.002]}}]
    assert "note: resuming with train.epochs 2 → 4, train.lr 0.001 → 0.002" in lines
    assert any("onecycle schedule is re-planned for 4 epochs" in line for line in lines)
    from cnnlab.training.optim import lr_factor

    steps = 6000 // 512 + 1  # 11 full batches and one of 368
    epoch3 = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][2]
    # the logged rate of the first new epoch is the one its first step used, on the new plan
    assert epoch3["lr"] == pytest.approx(0.002 * lr_factor(longer.train, 2 * steps, 4 * steps, steps), rel=1e-12)
    assert load_config(run / "config.yaml").train.epochs == 4


def test_a_resumed_folder_run_takes_its_images_new_place(tmp_path, image_folder):
    import shutil as sh

    moved = tmp_path / "moved"
    sh.copytree(image_folder, moved)
    cfg = experiment_config(dataset=f"folder:{moved}", model="cnn_32x1", epochs=1, batch_size=32,
                            overrides=[("data.image_size", 28), ("data.grayscale", True)])
    run = tmp_path / "run"
    quiet(cfg, out=run)
    sh.move(moved, tmp_path / "elsewhere")
    from cnnlab.runs.loaded import evaluate_run
    from cnnlab.runs.options import resume_config

    with pytest.raises(CnnlabError, match=r"image folder .*moved does not exist.*takes their new folder as `data_dir`"):
        evaluate_run(run)
    assert evaluate_run(run, data_dir=tmp_path / "elsewhere")[1].acc > 0
    assert quiet(resume_config(run, epochs=2, data_dir=str(tmp_path / "elsewhere")), resume=run).failed is None
    assert load_config(run / "config.yaml").data.dataset == f"folder:{tmp_path / 'elsewhere'}"


def test_restore_best_leaves_exactly_the_best_epochs_weights(tmp_path):
    from cnnlab.runs.history import best_epoch

    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=4, batch_size=512, lr=0.02,
                            precision="fp32", overrides=[("callbacks.restore_best", True),
                                                         ("callbacks.monitor", "val_acc")])
    run = tmp_path / "run"
    result = quiet(cfg, out=run)
    best = best_epoch(result.history, "val_acc")
    final, kept = load_file(run / "model.safetensors"), load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)
    assert json.loads((run / "checkpoints" / "best" / "state.json").read_text()) is not None
    from cnnlab.training.checkpoint import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "best")["epoch"] == best["epoch"]
    assert result.test.acc == pytest.approx(best["val_acc"], abs=1e-12)  # the test set validates each epoch


def test_a_resume_that_fails_leaves_the_run_as_it_was(dnn_run, tmp_path):
    import shutil as sh

    from cnnlab.runs.options import resume_config

    run = tmp_path / "run"
    sh.copytree(dnn_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    mismatched = resume_config(run, epochs=3, overrides=[("model.name", "cnn_32x1")])
    with pytest.raises(CnnlabError, match="does not fit this model"):
        quiet(mismatched, resume=run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    with pytest.raises(CnnlabError, match=r"has already trained 2 epoch\(s\); to train on, set `epochs` above 2"):
        quiet(resume_config(run, epochs=2), resume=run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_log_receives_every_line_and_extra_callbacks_run(tmp_path):
    from cnnlab.training.callbacks import Callback

    class Count(Callback):
        def __init__(self):
            self.epochs = 0

        def on_train_epoch_end(self, trainer, logs):
            self.epochs += 1

    lines: list[str] = []
    count = Count()
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=2, batch_size=512)
    train(cfg, out=tmp_path / "run", progress=False, log=lines.append, callbacks=[count])
    assert count.epochs == 2
    assert [line.split(" - ")[0] for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"]
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["command"].startswith("Python") and meta["min_delta"] == 0.0


def test_every_file_of_a_run_gets_the_umasks_permissions(tmp_path):
    import stat

    old = os.umask(0o027)
    try:
        quiet(experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=1, batch_size=512),
              out=tmp_path / "run")
    finally:
        os.umask(old)
    found = list((tmp_path / "run").rglob("*"))
    assert len(found) > 10
    for p in [tmp_path / "run", *found]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o750 if p.is_dir() else 0o640), p


def test_the_rate_used_is_recorded_and_said(tmp_path):
    lines: list[str] = []
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=1, batch_size=512)
    train(cfg, out=tmp_path / "r", progress=False, log=lines.append)
    assert "note: train.lr is not set: using 0.001, the default; set train.lr to choose another" in lines
    assert "lr: 0.001" in (tmp_path / "r" / "config.yaml").read_text()  # a rerun from config.yaml uses the same


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_short_training_on_cuda(tmp_path):
    cfg = experiment_config(dataset="fashion-mnist-sample", model="cnn_32_64", epochs=2, batch_size=128,
                            overrides=[("train.device", "cuda")])
    result = quiet(cfg, out=tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["engine"]["device"].startswith("cuda") and result.failed is None
    rows = _epochs(tmp_path / "r")
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    # the same recipe on the CPU reaches ~0.8 after 2 epochs on the sample; a broken GPU path stays near 0.1
    assert result.test.acc >= 0.7


HOLD = ("import sys, time\nfrom cnnlab.runs.run_dir import RunLock\nRunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def test_a_run_in_training_refuses_a_second_resume_and_an_overwrite(dnn_run, tmp_path):
    from cnnlab.runs.options import resume_config

    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    # a trainer of this run, as far as the lock can tell
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert proc.stdout.readline() == b"held\n"
        busy = rf"run is being trained by process {proc.pid} on .*; wait for it to end or stop it"
        with pytest.raises(CnnlabError, match=busy):
            quiet(resume_config(run, epochs=3), resume=run)
        with pytest.raises(CnnlabError, match=busy):
            quiet(experiment_config(**{**OPTIONS, "epochs": 1}), out=run, overwrite=True)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
        assert (run / ".lock").read_text().split()[0] == str(proc.pid)  # the owner is still named
    finally:
        proc.kill()
        proc.wait()
    # its owner killed, the stale lock is taken over and the resume goes ahead, clearing what a killed writer left
    (run / "checkpoints" / ".last.k1ll.tmp").mkdir()
    lines = []
    assert train(resume_config(run, epochs=3), resume=run, progress=False, log=lines.append).failed is None
    assert "note: removed 1 half-written file(s) left by an interrupted writer: checkpoints/.last.k1ll.tmp" in lines
    assert not (run / "checkpoints" / ".last.k1ll.tmp").exists()
    assert [m["epoch"] for m in _epochs(run)] == [1, 2, 3]
    assert (run / ".lock").read_text() == ""  # released at the end


def test_a_run_stopped_after_its_last_epoch_is_finished_by_a_resume(dnn_run, tmp_path):
    from cnnlab.runs.options import resume_config

    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    for name in ("model.safetensors", "results.json", "summary.txt"):  # killed during the test evaluation
        (run / name).unlink()
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    lines = []
    assert train(resume_config(run, epochs=2), resume=run, progress=False, log=lines.append).failed is None
    assert "note: all 2 epochs were trained before the stop; finishing the run (final weights, test evaluation)" \
        in lines
    assert (run / "model.safetensors").read_bytes() == (dnn_run / "model.safetensors").read_bytes()
    assert json.loads((run / "results.json").read_text()) == json.loads((dnn_run / "results.json").read_text())
    assert [m["epoch"] for m in _epochs(run)] == [1, 2]
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_a_stopped_run_prints_a_resume_command_that_a_shell_runs_as_one_path(tmp_path):
    from cnnlab.training.callbacks import Callback
    from cnnlab.training.trainer import TrainingInterrupted

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C at the terminal: the trainer saves its place

    lines: list[str] = []
    out = tmp_path / "my runs" / "it's"
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=1)
    with pytest.raises(TrainingInterrupted):
        train(cfg, out=out, progress=False, log=lines.append, callbacks=[CtrlC()])
    assert lines[-1].endswith(f"continue with: cnnlab train --resume '{tmp_path}/my runs/it'\"'\"'s'")
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_run_with_ema_keeps_the_averaged_weights_it_validated(tmp_path):
    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=2, batch_size=256,
                            precision="fp32", overrides=[("train.ema", 0.9)])
    run = tmp_path / "run"
    result = quiet(cfg, out=run)
    final, last = load_file(run / "model.safetensors"), load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)  # the average
    from cnnlab.training.checkpoint import load_checkpoint

    trained = load_checkpoint(run / "checkpoints" / "last")["train_weights"]
    assert any(not torch.equal(final[k], trained[k]) for k in final)  # ... not the weights that trained
    assert result.test.acc == pytest.approx(result.history[-1]["val_acc"], abs=1e-12)  # test set = validation


def test_ema_with_restore_best_tests_and_keeps_the_best_epochs_average(tmp_path):
    from cnnlab.runs.history import best_epoch

    cfg = experiment_config(dataset="fashion-mnist-sample", model="dnn_128", epochs=3, batch_size=256, lr=0.05,
                            overrides=[("train.ema", 0.9), ("train.steps_per_epoch", 4),
                                                         ("callbacks.restore_best", True),
                                                         ("callbacks.monitor", "val_acc")])
    run = tmp_path / "run"
    result = quiet(cfg, out=run)
    best = best_epoch(result.history, "val_acc")
    assert best["epoch"] != len(result.history)  # this seed peaks before the end: the restore matters
    final, kept = load_file(run / "model.safetensors"), load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)
    assert result.test.acc == pytest.approx(best["val_acc"], abs=1e-12)  # the test set validates each epoch


def test_the_data_line_says_when_validation_runs():
    from cnnlab.runs.experiment import _cadence

    assert _cadence(1, 5) == ", each epoch"
    assert _cadence(5, 5) == _cadence(9, 5) == ", after the last epoch"
    assert _cadence(2, 5) == ", every 2 epochs and after the last"
