"""``cnnlab evaluate``, ``show``, ``report`` and ``augment-preview``: what they print, the files they write, and
user mistakes as one ``error:`` line naming the flag."""

import json

import pytest
from PIL import Image

from cnnlab.cli import main


def test_evaluate_json_and_text(dnn_run, capsys):
    assert main(["evaluate", str(dnn_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"test_loss", "test_acc", "per_class", "confusion"}
    assert len(data["confusion"]) == 10 and sum(map(sum, data["confusion"])) == 1000
    assert data["test_acc"] == pytest.approx(json.loads((dnn_run / "results.json").read_text())["test_acc"])
    assert main(["evaluate", str(dnn_run)]) == 0
    out = capsys.readouterr().out
    assert "Per-class accuracy" in out and "Confusion matrix" in out and "Ankle " in out
    assert out.startswith("Test set: fashion-mnist-sample:test (1,000 images)\nTest loss: ")
    assert "Most confused: " in out and " → " in out


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "."], "is not a cnnlab run directory"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_show_prints_the_paths_it_wrote(small_cnn_run, tmp_path, capsys):
    assert main(["show", str(small_cnn_run), "feature-maps", "--images", "1,2", "--layers", "conv2d_1", "--filter", "3",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.split("/")[-1] for p in printed} == {"feature-maps.png", "feature-maps-conv2d_1.png"}
    assert sorted(printed) == sorted(str(p) for p in tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["feature-maps", "--layers", "conv9"], "conv9"),
    (["feature-maps", "--images", "99999"], "out of range; the test set has 1,000 images"),
    (["feature-maps", "--filter", "50"], "8"),
    (["templates"], "fully-connected"),
    (["heatmap"], "unknown view 'heatmap'; valid: all, architecture"),
    (["feature-maps", "--images", "a,b"], "expected comma-separated"),
])
def test_bad_view_options_are_one_line_errors(small_cnn_run, argv, message, capsys):
    assert main(["show", str(small_cnn_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_library_names_become_flags_in_view_errors(small_cnn_run, capsys):
    assert main(["show", str(small_cnn_run), "feature-maps", "--images", "99999"]) == 2
    assert capsys.readouterr().err.startswith("error: --images 99999 is out of range")
    assert main(["show", str(small_cnn_run), "curves", "-n", "0"]) == 2
    assert capsys.readouterr().err == "error: -n is 0; views draw at least 1 image or filter\n"


def test_report_prints_the_file_and_how_to_open_it(dnn_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(dnn_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"Report: {out}\nOpen: {out.resolve().as_uri()}\n"
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a cnnlab run directory" in err and err.count("\n") == 1


def test_report_out_must_be_html(dnn_run, tmp_path, capsys):
    assert main(["report", str(dnn_run), "--out", str(tmp_path / "report.png")]) == 2
    err = capsys.readouterr().err
    assert "ending in .html" in err and err.startswith(f"error: --out {tmp_path / 'report.png'}: the report is")


def test_augment_preview_writes_a_grid(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is relative
    cfg = tmp_path / "aug.yaml"
    cfg.write_text("data:\n  dataset: fashion-mnist-sample\n  augment: {hflip: true, rotation: 10, cutout: 6}\n")
    out = tmp_path / "aug.png"
    assert main(["augment-preview", str(cfg), "--out", str(out), "-n", "3", "--copies", "4"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    img = Image.open(out)
    assert img.size[0] > 300 and img.size[1] > 200
    assert main(["augment-preview", str(cfg), "--set", "data.augment.hflip=false", "--set", "data.augment.rotation=0",
                 "--set", "data.augment.cutout=0"]) == 2
    assert "enables no augmentation" in capsys.readouterr().err
