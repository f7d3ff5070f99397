"""``cnnlab train``: flags to a run, Keras-style epoch lines, what is printed at the end, resume, and user
mistakes as one ``error:`` line naming the flag (on the bundled Fashion-MNIST sample, small models)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from cnnlab.cli import main
from cnnlab.runs.experiment import TrainResult
from cnnlab.runs.run_dir import RunDir

QUICK = ["--dataset", "fashion-mnist-sample", "--model", "dnn_128", "--epochs", "2", "--batch-size", "256",
         "--no-progress"]


def test_epoch_lines_are_keras_style(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Epoch 1/1"))
    parts = line.split(" - ")
    assert parts[1].endswith("s") and parts[2].startswith("loss ") and parts[3].startswith("acc ")
    assert parts[4].startswith("val_loss ") and parts[5].startswith("val_acc ")
    assert "Test accuracy:" in out and f"Run: {tmp_path / 'r'}" in out
    run = tmp_path / "r"
    assert f"Open: {run / 'summary.txt'} (model and per-class accuracy), {run / 'history.csv'} (per epoch)" in out
    assert f"Next: cnnlab evaluate {run}   cnnlab predict {run} IMAGE.png" in out


def test_out_never_clobbers(dnn_run, capsys):
    before = (dnn_run / "metrics.jsonl").read_text()
    assert main(["train", *QUICK, "--out", str(dnn_run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert f"--resume {dnn_run} to continue it, or choose another --out" in err
    assert (dnn_run / "metrics.jsonl").read_text() == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert main(["train", *QUICK, "--out", str(tmp_path), "--overwrite"]) == 2
    assert "not a cnnlab run directory (no run.json); refusing" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_stop_at_from_the_command_line(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "5", "--stop-at", "loss=10", "--out", str(tmp_path / "r")]) == 0
    assert "Stopped early: reached train_loss" in capsys.readouterr().out
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "resnet9000", "--dataset", "fashion-mnist-sample"], "unknown model 'resnet9000'; valid: "),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; valid: cifar-10, fashion-mnist"),
    (["train", "--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
    (["train", "--set", "train.epochs=three"], "train.epochs expects an integer"),
    (["train", "--config", "nope.yaml"], "config file nope.yaml not found"),
    (["train", "--dataset", "fashion-mnist-sample", "--set", "model.layers.0.kernel_size=30"], "larger than its 28x28 input"),
    (["train", "--dataset", "fashion-mnist-sample", "--stop-at", "val_f1=0.9"], "unknown metric 'val_f1'"),
    (["train", "--resume", "/nonexistent/run"], "is not a directory"),
    (["train", "--dataset", "fashion-mnist-sample", "--nproc", "2", "--batch-size", "255"],
     "error: --batch-size 255 does not divide among 2 processes (it is the global batch); use a multiple of 2"),
    (["train", "--dataset", "fashion-mnist-sample", "--nproc", "0"], "error: --nproc must be ≥ 1 and ≤ 1024, got 0"),
    (["train", "--lr", "nan"], "error: --lr expects a finite number, got nan"),
    (["train", "--lr", "inf"], "error: --lr expects a finite number, got inf"),
    (["train", "--set", "train.lr=nan"], "error: train.lr expects a finite number, got 'nan'"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_weight_file_errors_name_the_flag_or_the_set_key(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    argv = ["train", "--dataset", "fashion-mnist-sample", "--model", "cnn_32x1"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--weights", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: weights file {missing} does not exist; check the --weights path\n"
    assert main([*argv, "--out", str(tmp_path / "b"), "--set", f"model.weights={missing}"]) == 2
    assert capsys.readouterr().err == f"error: weights file {missing} does not exist; check the model.weights path\n"


def test_pretrained_needs_a_registered_arch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "fashion-mnist-sample", "--model", "cnn_64x2", "--pretrained"]) == 2
    assert "no official ImageNet weights for 'cnn_64x2'" in capsys.readouterr().err


def test_pretrained_offline_is_a_clear_error(capsys, monkeypatch, tmp_path):
    from cnnlab.models import MODELS

    monkeypatch.chdir(tmp_path)
    entry = MODELS.get("resnet18")
    weights = replace(entry.meta.weights, url="http://127.0.0.1:9/resnet18-f37072fd.pth")
    monkeypatch.setitem(MODELS._items, "resnet18", replace(entry, meta=replace(entry.meta, weights=weights)))
    assert main(["train", "--dataset", "fashion-mnist-sample", "--model", "resnet18", "--pretrained", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--weights" in err and err.count("\n") == 1


def test_train_on_a_folder_prints_its_report(image_folder, tmp_path, capsys):
    argv = ["train", "--dataset", f"folder:{image_folder}", "--set", "data.image_size=28", "--set", "data.grayscale=true",
            "--model", "cnn_32x1", "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tshirt" in out and f"{image_folder}: 120 images, 3 classes" in out  # the folder report
    assert json.loads((tmp_path / "r" / "data_report.json").read_text())["counts"]["trouser"] == 40


def test_resume_extends_a_run_and_refuses_options_that_cannot_apply(dnn_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(dnn_run, run)
    assert main(["train", "--resume", str(run), "--model", "cnn_32x1", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == ("error: --resume continues a run with its own model, data and starting "
                                       "weights, so --model, --out cannot apply; drop them (--epochs extends the "
                                       "run; --batch-size, --lr, --precision, --stop-at, --data-dir, --nproc, "
                                       "--dist-timeout, --cache-features change how it goes on)\n")
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "so --overwrite cannot apply; drop it " in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Resuming {run} after epoch 2/3" in out and "Epoch 3/3 - " in out and f"Run: {run}" in out
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_failed_run_exits_1_and_says_what_was_kept(tmp_path, capsys, monkeypatch):
    import cnnlab.cli.train as cli_train

    run = RunDir(tmp_path / "run")
    monkeypatch.setattr(cli_train, "train", lambda cfg, **kw: TrainResult(run, [], None, None, "loss became nan"))
    assert main(["train", "--dataset", "fashion-mnist-sample"]) == 1
    assert capsys.readouterr().out == f"Run: {run.path} (failed; no epoch finished, so nothing was kept)\n"
    (run.checkpoints / "last").mkdir(parents=True)
    assert main(["train", "--dataset", "fashion-mnist-sample"]) == 1
    assert capsys.readouterr().out == (f"Run: {run.path} (failed; the last good checkpoint is in "
                                       f"{run.checkpoints / 'last'})\n")


def test_a_zero_flag_reaches_the_config_and_is_refused_by_its_flag(capsys, tmp_path):
    assert main(["train", "--dataset", "fashion-mnist-sample", "--epochs", "0", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == "error: --epochs must be ≥ 1, got 0\n"
    assert main(["train", "--dataset", "fashion-mnist-sample", "--set", "train.epochs=0"]) == 2
    assert capsys.readouterr().err == "error: train.epochs must be ≥ 1, got 0\n"  # typed by --set: its key
    assert not (tmp_path / "r").exists()


def test_log_tensorboard_and_a_missing_package(tmp_path, capsys, monkeypatch):
    assert main(["train", *QUICK, "--epochs", "1", "--log", "tensorboard", "--out", str(tmp_path / "r")]) == 0
    assert len(list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    capsys.readouterr()
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # as if cnnlab[tensorboard] were not installed
    assert main(["train", *QUICK, "--log", "tensorboard", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == "error: --log needs the tensorboard package; install it with pip install 'cnnlab[tensorboard]'\n"
    assert not (tmp_path / "s").exists()  # refused before the run folder appears


# ------------------------------------------------------------------ SIGTERM part-way, resume, bit-identical

# the tutorial CNN, fp32 on the CPU: deterministic, so a resumed run must equal an uninterrupted one bit for bit
TUTORIAL = ["train", "--config", "fashion_mnist_cnn", "--dataset", "fashion-mnist-sample", "--epochs", "2",
            "--precision", "fp32", "--no-progress"]


def _cli(*argv):
    return [sys.executable, "-m", "cnnlab", *argv]


def _metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(tmp_path):
    from cnnlab.training.checkpoint import load_checkpoint

    run = tmp_path / "stopped"
    proc = subprocess.Popen(_cli(*TUTORIAL, "--out", str(run)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=os.environ.copy(), text=True)
    lines = []
    for line in proc.stdout:  # the model line comes just before the first step
        lines.append(line)
        if line.startswith("Model:"):
            break
    time.sleep(1.0)  # part-way into epoch 1 (an epoch of 47 steps takes about 2 s here)
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait() == 143, out
    state = load_checkpoint(run / "checkpoints" / "last")
    assert state["progress"] is not None and 0 < state["progress"]["step"] < 47, "not saved part-way"
    where = f"epoch {state['epoch'] + 1}, batch {state['progress']['step']}"
    assert (f"Stopped by SIGTERM in {where}; saved {run / 'checkpoints' / 'last'}; continue with: cnnlab train "
            f"--resume {run}") in out
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert (run / ".lock").read_text() == ""  # released on the way out

    resumed = subprocess.run(_cli("train", "--resume", str(run), "--no-progress"), capture_output=True, text=True,
                             env=os.environ.copy())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {run} after epoch {state['epoch']}/2, batch {state['progress']['step']} of epoch " in resumed.stdout
    clean = tmp_path / "clean"
    assert subprocess.run(_cli(*TUTORIAL, "--out", str(clean)), capture_output=True,
                          env=os.environ.copy()).returncode == 0
    assert _metrics(run) == _metrics(clean)  # same losses and accuracies to the last bit, epochs 1..2
    assert (run / "model.safetensors").read_bytes() == (clean / "model.safetensors").read_bytes()
    assert json.loads((run / "run.json").read_text())["status"] == "done"
