"""``cnnlab import-keras``: a Keras file becomes a run that evaluate, predict, show, report, export and summary
work on; mistakes are one ``error:`` line naming the flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.data.datasets import load_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The BatchNorm / 'same' fixture imported with the bundled Fashion-MNIST sample (shared by the tests here)."""
    out = tmp_path_factory.mktemp("keras") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test cache exists
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main(["import-keras", str(FIXTURES / "bn_same.keras"), "--out", str(out),
                     "--dataset", "fashion-mnist-sample"]) == 0
    return out


def test_import_prints_the_run_and_what_next(tmp_path, capsys) -> None:
    out = tmp_path / "t1"
    assert main(["import-keras", str(FIXTURES / "tutorial1_cnn.h5"), "--out", str(out),
                 "--dataset", "fashion-mnist-sample"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Keras 2.21.0 model 'sequential': 7 layers, 243,786 params (left out: input_1)\n")
    assert re.search(r"^Test accuracy on fashion-mnist-sample: 0\.\d{4} \(loss \d\.\d{4}, 1,000 images\)$", text, re.M)
    assert f"Run: {out}\nNext: cnnlab evaluate {out}" in text


def test_import_names_a_spaced_run_folder_as_a_shell_reads_it(tmp_path, capsys) -> None:
    out = tmp_path / "keras runs" / "ü"
    assert main(["import-keras", str(FIXTURES / "functional_rescaling.h5"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Next: cnnlab predict '{out}' IMAGE.png   cnnlab export '{out}'   (import" in text


def test_evaluate_and_summary_of_the_imported_run(imported, capsys) -> None:
    assert main(["evaluate", str(imported), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["test_acc"] == json.loads((imported / "results.json").read_text())["test_acc"]
    total, trainable = MANIFEST["bn_same.keras"]["params"]
    for source in (imported, FIXTURES / "bn_same.keras"):  # the run and Keras's file print Keras's counts
        assert main(["summary", str(source)]) == 0
        out = capsys.readouterr().out
        assert f"Total params: {total:,}\nTrainable params: {trainable:,}\n" in out
        assert "batch_normalization_2 (BatchNormalization)" in out


def test_predict_and_export_match_keras(imported, tmp_path, capsys) -> None:
    _, test = load_dataset("fashion-mnist-sample")
    Image.fromarray(test.images[0, 0].numpy()).save(tmp_path / "img0.png")
    assert main(["predict", str(imported), str(tmp_path / "img0.png"), "--json", "--top-k", "1"]) == 0
    top = json.loads(capsys.readouterr().out)["top"][0]
    keras = np.load(FIXTURES / "bn_same.keras.npy")[0]
    assert top["label"] == test.classes[int(keras.argmax())]
    assert top["prob"] == pytest.approx(float(keras.max()), abs=1e-4)  # fp32 both; see tests/models/test_keras.py
    assert main(["export", str(imported)]) == 0
    assert "Exported: " in capsys.readouterr().out and (imported / "model.onnx").is_file()


def test_show_and_report(imported, capsys) -> None:
    assert main(["show", str(imported), "all", "-n", "4"]) == 0
    drawn = {Path(p).stem for p in capsys.readouterr().out.split()}
    assert {"feature-maps", "filters", "predictions", "mistakes", "architecture"} <= drawn
    assert "curves" not in drawn  # no epochs were trained here
    assert main(["report", str(imported)]) == 0
    page = (imported / "report.html").read_text()
    assert "from Keras 3.15.1" in page and 'id="feature-maps"' in page and 'id="curves"' not in page


@pytest.mark.parametrize("argv, message", [
    (["import-keras", "missing.h5"], "error: Keras model file missing.h5 does not exist"),
    (["import-keras", str(FIXTURES / "functional_rescaling.h5"), "--classes", "a,b"],
     "error: --classes names 2 classes but the model has 3 outputs"),
    (["import-keras", str(FIXTURES / "cifar_basic.h5"), "--dataset", "fashion-mnist-sample"],
     "error: the Keras model takes 32x32x3 images but --dataset fashion-mnist-sample has 28x28x1"),
])
def test_mistakes_are_one_line_errors(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_evaluate_without_a_dataset_says_how_to_get_one(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["import-keras", str(FIXTURES / "functional_rescaling.keras"), "--out", str(out)]) == 0
    assert "import again with --dataset" in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 2
    assert "import it again with --dataset" in capsys.readouterr().err


def test_export_metrics(dnn_run, small_cnn_run, tmp_path, capsys) -> None:
    out = tmp_path / "m.csv"
    assert main(["export-metrics", str(dnn_run), str(small_cnn_run), "--format", "csv", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n" and len(out.read_text().splitlines()) == 1 + 2 + 1
    assert main(["export-metrics", str(dnn_run), "--format", "csv", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {out} already exists; pass --overwrite")
    assert main(["export-metrics", str(dnn_run), str(small_cnn_run), "--format", "tensorboard",
                 "--out", str(tmp_path / "tb")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(tmp_path / "tb" / dnn_run.name), str(tmp_path / "tb" / small_cnn_run.name),
                     f"Open: tensorboard --logdir {tmp_path / 'tb'}"]
