"""The CLI end to end on the bundled real sample (fashion-mnist-sample) with small models."""

import json

import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.config import load_config
from cnnlab.data.datasets import load_dataset

QUICK = ["--dataset", "fashion-mnist-sample", "--model", "dnn_128", "--epochs", "2", "--batch-size", "256",
         "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "run.json", "metrics.jsonl", "history.csv", "summary.txt", "results.json",
            "model.safetensors", "checkpoints"} <= names
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"} <= set(rows[0])
    assert (run_dir / "history.csv").read_text().splitlines()[0] == "epoch,train_loss,train_acc,val_loss,val_acc,seconds,lr"
    for kind in ("last", "best"):
        assert (run_dir / "checkpoints" / kind / "model.safetensors").is_file()
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.model.name == "dnn_128" and cfg.train.epochs == 2
    assert "Total params: 101,770" in (run_dir / "summary.txt").read_text()
    assert json.loads((run_dir / "results.json").read_text())["test_acc"] > 0.6


def test_epoch_lines_are_keras_style(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Epoch 1/1"))
    parts = line.split(" - ")
    assert parts[1].endswith("s") and parts[2].startswith("loss ") and parts[3].startswith("acc ")
    assert parts[4].startswith("val_loss ") and parts[5].startswith("val_acc ")
    assert "Test accuracy:" in out and f"Run: {tmp_path / 'r'}" in out


def test_out_never_clobbers(run_dir, capsys):
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["train", *QUICK, "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert main(["train", *QUICK, "--out", str(tmp_path), "--overwrite"]) == 2
    assert "not a cnnlab run directory (no run.json); refusing" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_evaluate_json_and_text(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"test_loss", "test_acc", "per_class", "confusion"}
    assert len(data["confusion"]) == 10 and sum(map(sum, data["confusion"])) == 1000
    assert data["test_acc"] == pytest.approx(json.loads((run_dir / "results.json").read_text())["test_acc"])
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "Per-class accuracy" in out and "Confusion matrix" in out and "Ankle " in out


def test_predict_files_and_bad_file(run_dir, tmp_path, capsys):
    _, test = load_dataset("fashion-mnist-sample")
    Image.fromarray(test.images[0, 0].numpy()).save(tmp_path / "boot.png")
    Image.fromarray(test.images[0, 0].numpy()).convert("RGB").resize((56, 56)).save(tmp_path / "boot.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    rc = main(["predict", str(run_dir), str(tmp_path / "boot.png"), str(tmp_path / "broken.png"),
               str(tmp_path / "boot.jpg"), "--top-k", "3"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'boot.png'}: ") and lines[0].count(",") == 2
    assert "broken.png" in err and err.count("\n") == 1
    assert main(["predict", str(run_dir), str(tmp_path / "boot.png"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["top"][0]["label"] in load_dataset("fashion-mnist-sample")[0].classes


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "resnet9000", "--dataset", "fashion-mnist-sample"], "unknown model 'resnet9000'; valid: "),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; valid: cifar-10, fashion-mnist"),
    (["train", "--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
    (["train", "--set", "train.epochs=three"], "train.epochs expects an integer"),
    (["train", "--config", "nope.yaml"], "config file nope.yaml not found"),
    (["train", "--dataset", "fashion-mnist-sample", "--set", "model.layers.0.kernel_size=30"], "larger than its 28x28 input"),
    (["train", "--dataset", "fashion-mnist-sample", "--stop-at", "val_f1=0.9"], "unknown metric 'val_f1'"),
    (["evaluate", "."], "is not a cnnlab run directory"),
    (["train", "--resume", "/nonexistent/run"], "is not a directory"),
    (["summary", "cnn_64x2", "--input-shape", "28x28"], "expected H,W,C"),
    (["datasets", "info", "mnits"], "unknown dataset 'mnits'"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_summary_prints_keras_total(capsys):
    assert main(["summary", "cnn_64x2"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 243,786" in out and "(None, 26, 26, 64)" in out
    assert main(["summary", "cnn_32x1", "--input-shape", "28,28,1"]) == 0
    assert "Total params: 693,962" in capsys.readouterr().out


def test_summary_of_a_yaml_layer_list(tmp_path, capsys):
    f = tmp_path / "m.yaml"
    f.write_text("- {type: Conv2D, filters: 16, kernel_size: 3, activation: relu}\n- {type: Flatten}\n"
                 "- {type: Dense, units: 10}\n")
    assert main(["summary", str(f), "--input-shape", "28,28,1"]) == 0
    assert f"Total params: {16 * 10 + 26 * 26 * 16 * 10 + 10:,}" in capsys.readouterr().out


def test_datasets_and_models_lists(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-sample" in out and "cifar-10" in out
    assert main(["datasets", "info", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in out or "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" in out
    assert main(["models"]) == 0
    assert "cnn_64x2" in capsys.readouterr().out


def test_stop_at_from_the_command_line(tmp_path, capsys):
    assert main(["train", *QUICK, "--epochs", "5", "--stop-at", "loss=10", "--out", str(tmp_path / "r")]) == 0
    assert "Stopped early: reached train_loss" in capsys.readouterr().out
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


def test_augment_preview_writes_a_grid(tmp_path, capsys):
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


def test_datasets_inspect_a_folder(image_folder, capsys):
    assert main(["datasets", "inspect", str(image_folder)]) == 0
    out = capsys.readouterr().out
    assert "120 readable images, 3 classes" in out and "trouser" in out
    assert main(["datasets", "inspect", str(image_folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["tshirt"] == 40


def test_python_dash_m_exit_codes_and_a_closed_pipe():
    import subprocess
    import sys

    bad = subprocess.run([sys.executable, "-m", "cnnlab", "datasets", "info", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown dataset 'nope'; valid:")
    usage = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--bogus"], capture_output=True, text=True)
    assert usage.returncode == 2 and "unrecognized arguments: --bogus" in usage.stderr
    # `cnnlab models | head -1`: the reader has gone before the output is written; no traceback, exit 0
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in proc.stderr.read()
