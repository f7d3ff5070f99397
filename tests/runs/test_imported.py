"""A Keras model file becomes a normal run directory: the files ``cnnlab train`` writes, an evaluation equal to
the run's own, and nothing written when the import is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnlab.errors import CnnlabError
from cnnlab.models.summary import param_counts
from cnnlab.runs.imported import SOURCE, import_keras
from cnnlab.runs.loaded import evaluate_run, load_run
from cnnlab.runs.run_dir import RunDir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "keras"
QUIET = {"log": lambda s: None}


def test_import_with_a_dataset_writes_a_finished_run(tmp_path) -> None:
    result = import_keras(FIXTURES / "tutorial1_cnn.h5", out=tmp_path / "run", dataset="fashion-mnist-sample", **QUIET)
    run = result.run
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["config.yaml", "history.csv", "metrics.jsonl", "model.safetensors", "results.json", "run.json",
                     "summary.txt"]
    meta = run.meta
    assert meta["source"] == SOURCE == "imported from Keras" and meta["status"] == "done"
    assert meta["imported_from"]["keras_version"] == "2.21.0" and meta["imported_from"]["format"] == "h5"
    assert meta["input_shape"] == [1, 28, 28] and meta["classes"][0] == "T-shirt/top" and meta["params"] == 243786
    assert meta["normalizer"] == {"mean": [0.0], "std": [1.0]}
    cfg = run.read_config()
    assert cfg.model.name is None and [layer["name"] for layer in cfg.model.layers][:2] == ["conv2d", "max_pooling2d"]
    assert cfg.data.dataset == "fashion-mnist-sample" and cfg.train.precision == "fp32"
    assert run.read_history() == []
    # the run as any command reads it back: the same weights and the same evaluation
    lr = load_run(run.path)
    assert torch.equal(lr.model.state_dict()["dense.weight"], result.keras.state_dict["dense.weight"])
    _, ev, _ = evaluate_run(run.path)
    saved = run.read_json("results.json")
    assert ev.acc == saved["test_acc"] == meta["test_acc"] == result.test.acc
    assert ev.confusion.tolist() == saved["confusion"]
    assert 0.6 < ev.acc < 1  # briefly trained in Keras: well above the 0.1 of guessing
    assert "Total params: 243,786" in run.file("summary.txt").read_text()


def test_import_without_a_dataset(tmp_path) -> None:
    result = import_keras(FIXTURES / "functional_rescaling.keras", out=tmp_path / "run", **QUIET)
    meta = result.run.meta
    assert result.test is None and meta["classes"] == ["class_0", "class_1", "class_2"] and meta["dataset"] is None
    assert meta["imported_from"]["normalization"] == "Rescaling layer"
    assert not result.run.file("results.json").exists()
    lr = load_run(result.run.path)
    assert param_counts(lr.model) == (189, 189)
    with pytest.raises(CnnlabError, match=r"names no dataset .* import it again with `dataset`"):
        evaluate_run(result.run.path)
    named = import_keras(FIXTURES / "functional_rescaling.h5", out=tmp_path / "named", classes=["a", "b", "c"], **QUIET)
    assert named.run.meta["classes"] == ["a", "b", "c"]


def test_refused_imports_write_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(CnnlabError, match=r"takes 32x32x3 images but `dataset` fashion-mnist-sample has 28x28x1"):
        import_keras(FIXTURES / "cifar_basic.keras", out=out, dataset="fashion-mnist-sample", **QUIET)
    with pytest.raises(CnnlabError, match=r"`classes` names 2 classes but the model has 3 outputs"):
        import_keras(FIXTURES / "functional_rescaling.keras", out=out, classes=["a", "b"], **QUIET)
    with pytest.raises(CnnlabError, match=r"^`classes` has an empty name at position 1; give every output a name$"):
        import_keras(FIXTURES / "functional_rescaling.keras", out=out, classes=["a", "", "c"], **QUIET)
    with pytest.raises(CnnlabError, match=r"^`classes` names 'a' twice; give every output its own name$"):
        import_keras(FIXTURES / "functional_rescaling.keras", out=out, classes=["a", "b", "a"], **QUIET)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no run, no temporary folder left behind
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(CnnlabError, match="already exists; pass `overwrite`"):
        import_keras(FIXTURES / "bn_same.h5", out=tmp_path / "taken", **QUIET)
    with pytest.raises(CnnlabError, match="is not a cnnlab run directory"):
        import_keras(FIXTURES / "bn_same.h5", out=tmp_path / "taken", overwrite=True, **QUIET)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_an_imported_run(tmp_path) -> None:
    first = import_keras(FIXTURES / "bn_same.h5", out=tmp_path / "run", **QUIET)
    second = import_keras(FIXTURES / "bn_same.keras", out=tmp_path / "run", overwrite=True, **QUIET)
    assert first.run.path == second.run.path
    assert RunDir.open(second.run.path).meta["imported_from"]["format"] == "keras"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["params"] == 4674
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
