"""Run: a run directory as a notebook sees it (facts, best epoch, evaluate, predict, show, report, export)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

import cnnlab
from cnnlab.errors import CnnlabError


def test_load_run_and_the_best_epoch(run):
    again = cnnlab.load_run(run.path)
    assert again.history == run.history
    best = again.best_epoch  # by the run's monitor (val_loss), the earliest of equals
    assert best["val_loss"] == min(h["val_loss"] for h in run.history)
    with pytest.raises(CnnlabError, match="not a directory"):
        cnnlab.load_run(run.path / "nope")
def test_predict_arrays_and_files(run, tmp_path):
    from PIL import Image

    from cnnlab.data.datasets import load_dataset

    _, test = load_dataset("fashion-mnist-sample")
    images = test.images[:5].numpy()
    probs = run.predict(images)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    Image.fromarray(images[0, 0]).save(tmp_path / "shoe.png")
    (result,) = run.predict(tmp_path / "shoe.png", top_k=2)
    assert result.error is None and len(result.top) == 2
    assert result.top[0][0] == run.meta["classes"][int(probs[0].argmax())]
def test_show_returns_figures_and_report_writes_html(run, tmp_path):
    fig = run.show("feature-maps", images=[0, 7])
    assert isinstance(fig, Figure) and len(fig.axes) >= 2
    assert set(run.figures("feature-maps", images=[0])) == {"feature-maps", "feature-maps-conv2d"}
    assert isinstance(run.show("curves"), Figure)
    path = run.report(tmp_path / "r.html")
    assert path.read_text().startswith("<!DOCTYPE html>")
def test_repr_html_is_a_table_with_the_curves(run):
    page = run._repr_html_()
    assert "<table>" in page and "status</th><td style='text-align:left'>done" in page
    assert "test accuracy" in page and "data:image/png;base64," in page
    assert "fashion-mnist-sample 28x28x1" in repr(run)


def test_export_writes_onnx_with_parity(run, tmp_path):
    path = run.export(tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.stat().st_size > 1000


def test_facts_of_a_run_that_is_still_running(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    for name in ("results.json", "model.safetensors"):
        (copy / name).unlink()
    meta = (copy / "run.json").read_text().replace('"status": "done"', '"status": "running"')
    (copy / "run.json").write_text(meta)
    r = cnnlab.Run(copy)
    assert r.status == "running" and r.results is None
    assert "test accuracy" not in r._repr_html_() and "running" in repr(r)


def test_show_options_are_checked_like_the_command_lines(run):
    with pytest.raises(CnnlabError, match="unknown option `bogus` of show; valid: images, layers, filter, n, seed"):
        run.show("feature-maps", bogus=1)
    assert run.figures("feature-maps", images="0,7").keys() == run.figures("feature-maps", images=[0, 7]).keys()
    with pytest.raises(CnnlabError, match=r"`images` 'a,b': expected test-set indices like \[0, 7, 26\]"):
        run.show("feature-maps", images="a,b")
    with pytest.raises(CnnlabError, match="`n` expects a whole number, got '4'"):
        run.show("predictions", n="4")


def test_predicting_no_images_gives_no_rows(run):
    probs = run.predict(np.zeros((0, 1, 28, 28), np.uint8))
    assert probs.shape == (0, 10)
