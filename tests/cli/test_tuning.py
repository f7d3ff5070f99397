"""cnnlab lr-find: the range test printed as a table with the suggestion, and drawn into a PNG."""

from __future__ import annotations

import pytest
from PIL import Image

from cnnlab.cli import main


def test_lr_find_prints_the_curve_and_the_suggestion_and_draws_it(tmp_path, capsys):
    out = tmp_path / "lr.png"
    rc = main(["lr-find", "--model", "dnn_128", "--dataset", "fashion-mnist-sample", "--batch-size", "128",
               "--steps", "40", "--start-lr", "1e-5", "--end-lr", "1", "--out", str(out)])
    stdout = capsys.readouterr().out.splitlines()
    assert rc == 0 and stdout[0].split() == ["lr", "loss", "smoothed"]
    marked = [line for line in stdout if line.endswith("<- suggested")]
    assert len(marked) == 1
    suggested = float(marked[0].split()[0])
    summary = next(line for line in stdout if line.startswith("Suggested learning rate"))
    assert f"{suggested:.2g}" in summary and stdout[-1] == f"Plot: {out}"
    assert any(line.startswith(f"Train with it: --lr {suggested:.2g} ") for line in stdout)
    assert Image.open(out).size[0] > 300


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "3"], "error: --epochs cannot apply: the range test runs --steps optimiser steps at rates from "
                        "--start-lr to --end-lr; drop it"),
    (["--steps", "3"], "error: --steps is 3; the test needs at least 14"),
    (["--nproc", "2", "--log", "tensorboard"], "error: --nproc, --log cannot apply: the range test runs in this one "
                                              "process and keeps no run to log; drop it"),
    (["--out", "x.jpg"], "error: --out x.jpg: the plot is a PNG"),
])
def test_lr_find_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(["lr-find", "--model", "dnn_128", "--dataset", "fashion-mnist-sample", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
