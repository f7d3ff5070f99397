"""A run killed with SIGKILL during epoch 2 of 3 and resumed ends like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnlab.cli import main

ARGS = ["train", "--dataset", "fashion-mnist-sample", "--model", "cnn_32_64", "--epochs", "3", "--batch-size", "64",
        "--no-progress"]


def _epochs(run):
    f = run / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.is_file() else []


@pytest.mark.slow
def test_sigkill_in_epoch_2_then_resume(tmp_path):
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *ARGS, "--out", str(run)],
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

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = _epochs(run)
    assert [m["epoch"] for m in resumed] == [1, 2, 3]

    clean = tmp_path / "clean"
    assert main([*ARGS, "--out", str(clean)]) == 0
    straight = _epochs(clean)
    # Same seed, same data order, RNG and optimiser state restored: equal up to float noise.
    assert resumed[-1]["val_acc"] == pytest.approx(straight[-1]["val_acc"], abs=0.01)
    assert resumed[-1]["train_loss"] == pytest.approx(straight[-1]["train_loss"], rel=0.02)
    assert json.loads((run / "run.json").read_text())["status"] == "done"
