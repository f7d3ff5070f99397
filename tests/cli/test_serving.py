"""``cnnlab predict`` and ``cnnlab export``: printed lines, JSON and CSV output, exit status 1 for files that
could not be read or a failed parity check, and user mistakes as one ``error:`` line naming the flag."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data.datasets import load_dataset

PARITY = re.compile(r"^parity: max abs diff (\d\.\de[-+]\d\d) over (\d+) test images \(limit 1e-4\)$", re.M)


@pytest.fixture
def run_copy(dnn_run, tmp_path):
    """A copy of the shared trained run, for commands that write into it (model.onnx)."""
    return shutil.copytree(dnn_run, tmp_path / "run")


@pytest.fixture
def folder(tmp_path):
    """Three test images as PNGs, a broken one, and a hidden file that is skipped."""
    _, test = load_dataset("fashion-mnist-sample")
    root = tmp_path / "pngs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(test.images[i, 0].numpy()).save(root / f"img{i}.png")
    (root / "zz_broken.png").write_bytes(b"\x89PNG not really")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_predict_files_and_bad_file(dnn_run, tmp_path, capsys):
    _, test = load_dataset("fashion-mnist-sample")
    Image.fromarray(test.images[0, 0].numpy()).save(tmp_path / "boot.png")
    Image.fromarray(test.images[0, 0].numpy()).convert("RGB").resize((56, 56)).save(tmp_path / "boot.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    rc = main(["predict", str(dnn_run), str(tmp_path / "boot.png"), str(tmp_path / "broken.png"),
               str(tmp_path / "boot.jpg"), "--top-k", "3"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'boot.png'}: ") and lines[0].count(",") == 2
    assert "broken.png" in err and err.count("\n") == 1
    assert main(["predict", str(dnn_run), str(tmp_path / "boot.png"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["top"][0]["label"] in load_dataset("fashion-mnist-sample")[0].classes


def test_predict_per_file_errors_are_translated_like_other_errors(dnn_run, tmp_path, capsys, monkeypatch):
    _, test = load_dataset("fashion-mnist-sample")
    Image.fromarray(test.images[0, 0].numpy()).save(tmp_path / "boot.png")
    monkeypatch.setenv("CNNLAB_MAX_PIXELS", "100")  # the 28x28 PNG (784 pixels) is over this limit
    assert main(["predict", str(dnn_run), str(tmp_path / "boot.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "raise data.max_pixels or $CNNLAB_MAX_PIXELS" in err and "`" not in err


def test_predict_json_is_the_same_for_both_engines(run_copy, tmp_path, capsys):
    _, test = load_dataset("fashion-mnist-sample")
    img = tmp_path / "boot.png"
    Image.fromarray(test.images[0, 0].numpy()).save(img)
    outs = []
    for engine in ("torch", "onnx"):
        assert main(["predict", str(run_copy), str(img), "--json", "--top-k", "3", "--engine", engine]) == 0
        out, err = capsys.readouterr()
        outs.append(json.loads(out))
    assert "note: exporting" in err and (run_copy / "model.onnx").is_file()  # notes go to stderr, not the JSON
    assert outs[0]["file"] == str(img) and len(outs[0]["top"]) == 3
    assert [t["label"] for t in outs[0]["top"]] == [t["label"] for t in outs[1]["top"]]
    assert np.allclose([t["prob"] for t in outs[0]["top"]], [t["prob"] for t in outs[1]["top"]], atol=1e-4)


def test_csv_out_prints_one_summary_line(dnn_run, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    rc = main(["predict", str(dnn_run), str(folder), str(tmp_path / "missing.png"), "--top-k", "2", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 1
    assert stdout.strip() == f"Predicted 3 of 5 images: {out}"  # per-file lines go to the CSV instead
    assert "zz_broken.png: not an image" in err and "missing.png: no such file" in err and err.count("\n") == 2
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "label", "prob", "label_2", "prob_2", "error"] and len(rows) == 6


def test_grid_png_of_a_folder(dnn_run, folder, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert main(["predict", str(dnn_run), str(folder), "--grid", str(grid)]) == 1  # the broken file
    out = capsys.readouterr().out
    assert f"Grid: {grid}" in out and out.count(": ") == 4  # 3 prediction lines + the grid line
    assert grid.is_file()
    assert main(["predict", str(dnn_run), str(folder / "img0.png"), "--grid", str(grid), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["file"] == str(folder / "img0.png") and err == f"Grid: {grid}\n"  # JSON stays clean


@pytest.mark.parametrize("setup, argv, message", [
    ("corrupt", ["--engine", "onnx"], "model.onnx is not a usable ONNX model"),
    (None, ["--engine", "tensorrt"], "unknown engine 'tensorrt'; valid: auto, onnx, torch"),
    (None, ["--top-k", "0"], "--top-k is 0; ask for at least 1 label"),
    ("norun", [], "is not a directory; pass a run directory"),
])
def test_predict_mistakes_are_one_line_errors(dnn_run, tmp_path, capsys, setup, argv, message):
    target = tmp_path / "copy"
    if setup != "norun":
        shutil.copytree(dnn_run, target)
    if setup == "corrupt":
        (target / "model.onnx").write_bytes(b"\x08\x07garbage")
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(img)
    assert main(["predict", str(target), str(img), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_failed_export_for_the_onnx_engine_exits_1(run_copy, tmp_path, capsys, monkeypatch):
    import cnnlab.serve.onnx as ex

    monkeypatch.setattr(ex, "max_prob_diff", lambda *a, **k: 0.25)  # as if onnxruntime disagreed
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(img)
    assert main(["predict", str(run_copy), str(img), "--engine", "onnx"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: parity: max abs diff 2.5e-01") and not (run_copy / "model.onnx").exists()


def test_export_prints_the_parity_line_and_the_file(run_copy, capsys):
    assert main(["export", str(run_copy), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    m = PARITY.search(out)
    assert m, out
    assert float(m.group(1)) <= 1e-4 and m.group(2) == "256"
    assert f"Exported: {run_copy / 'model.onnx'} (opset 17, batch dynamic)" in out
    assert (run_copy / "model.onnx").is_file()


def test_export_quantize_int8_prints_both_accuracies_and_files(run_copy, capsys):
    assert main(["export", str(run_copy), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^int8: test accuracy fp32 \d+\.\d\d% \| int8 \d+\.\d\d% over 1,000 test images \(drop "
                     r"-?\d+\.\d\d points, limit 0\.5; calibrated on 300 training images\)$", out, re.M), out
    assert f"Exported: {run_copy / 'model.int8.onnx'} (int8, QDQ)" in out


def test_export_refused_by_max_drop_names_the_flag(run_copy, capsys):
    assert main(["export", str(run_copy), "--quantize", "int8", "--max-drop", "-100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: int8: test accuracy fp32 ") and err.count("\n") == 1
    assert "loses more than --max-drop; nothing was written (raise --max-drop" in err
    assert not (run_copy / "model.onnx").exists() and not (run_copy / "model.int8.onnx").exists()


def test_export_options_reach_the_file(dnn_run, tmp_path, capsys):
    out = tmp_path / "fixed.onnx"
    assert main(["export", str(dnn_run), "--out", str(out), "--opset", "13", "--batch", "8"]) == 0
    assert f"Exported: {out} (opset 13, batch 8)" in capsys.readouterr().out
    assert out.is_file() and not (dnn_run / "model.onnx").exists()


def test_parity_failure_exits_1_and_writes_nothing(dnn_run, tmp_path, capsys, monkeypatch):
    import cnnlab.serve.onnx as ex

    monkeypatch.setattr(ex, "max_prob_diff", lambda *a, **k: 0.25)  # as if onnxruntime disagreed
    out = tmp_path / "new" / "folder" / "bad.onnx"
    assert main(["export", str(dnn_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: parity: max abs diff 2.5e-01 over 256 test images (limit 1e-4)")
    assert err.count("\n") == 1 and "was not written" in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor the folders made for it


@pytest.mark.parametrize("argv, message", [
    (["--format", "tflite"], "unknown export format 'tflite'; valid: onnx"),
    (["--opset", "7"], "--opset 7 is not supported; use 11..20"),
    (["--batch", "0"], "--batch '0': expected dynamic or a positive batch size"),
    (["--batch", "many"], "--batch 'many': expected dynamic"),
])
def test_export_mistakes_are_one_line_errors(dnn_run, argv, message, capsys):
    assert main(["export", str(dnn_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_export_of_a_missing_run(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory; pass a run directory" in err and err.count("\n") == 1


def test_a_file_name_with_a_newline_prints_on_one_line():
    from cnnlab.cli.serving import printable

    assert printable("photos/cat\nfinal.png") == "photos/cat\\nfinal.png"
    assert printable("photos/Chat noir été.png") == "photos/Chat noir été.png"  # printable text is left alone
