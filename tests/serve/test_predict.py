"""predict: engines (PyTorch, onnxruntime, auto), CSV and grid output, folders, the Predictor API, mistakes."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from PIL import Image

from cnnlab.config import load_config
from cnnlab.data.datasets import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.runs import experiment as api
from cnnlab.serve.predict import GRID_MAX, Predictor, decode_chunks, predict_files, write_csv, write_grid


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_cnn_layers):
    """A tiny CNN trained one epoch on the bundled Fashion-MNIST sample (no model.onnx yet)."""
    cfg = load_config(None, base={"data": {"dataset": "fashion-mnist-sample"}, "model": {"layers": tiny_cnn_layers},
                                  "train": {"epochs": 1, "batch_size": 256}})
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert api.train(cfg, out=out, progress=False, log=lambda s: None).failed is None
    return out


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("fashion-mnist-sample")[1]


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, test_set):
    """70 test images as PNGs in a folder (enough for the worker-pool decode), plus a broken one and a
    hidden file that must be skipped."""
    root = tmp_path_factory.mktemp("pngs")
    for i in range(70):
        Image.fromarray(test_set.images[i, 0].numpy()).save(root / f"img{i:02d}.png")
    (root / "zz_broken.png").write_bytes(b"\x89PNG not really")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_onnx_engine_equals_torch_on_test_images(run, test_set, capsys):
    torch_p = Predictor.from_run(run, "torch")
    notes: list[str] = []
    onnx_p = Predictor.from_run(run, "onnx", log=notes.append)  # exports model.onnx first, with the check
    assert (run / "model.onnx").is_file() and notes[0].startswith("note: exporting")
    assert notes[1].startswith("parity: max abs diff")
    assert (torch_p.engine, onnx_p.engine) == ("torch", "onnx")
    x = test_set.images[:300].numpy()
    a, b = torch_p.predict(x), onnx_p.predict(x)  # 300 > batch_size 256: two batches each
    assert a.shape == (300, 10) and np.allclose(a.sum(1), 1, atol=1e-5)
    assert np.abs(a - b).max() <= 1e-4
    assert (a.argmax(1) == test_set.labels[:300].numpy()).mean() > 0.6
    # the same through predict_files, file by file
    img = run.parent / "boot.png"
    Image.fromarray(test_set.images[0, 0].numpy()).save(img)
    outs = []
    for engine in ("torch", "onnx"):
        (result,) = predict_files(run, [img], top_k=3, engine=engine)
        assert result.error is None and len(result.top) == 3
        outs.append(result.top)
    assert [label for label, _ in outs[0]] == [label for label, _ in outs[1]]
    assert np.allclose([p for _, p in outs[0]], [p for _, p in outs[1]], atol=1e-4)


def test_csv_out_with_top_k_and_an_error_row(run, pngs, tmp_path):
    out = tmp_path / "preds.csv"
    results = predict_files(run, [pngs, tmp_path / "missing.png"], top_k=3)
    errors = [r.error for r in results if r.error]
    assert len(results) == 72 and len(errors) == 2
    assert "zz_broken.png: not an image" in errors[0] and errors[1].endswith("missing.png: no such file")
    assert write_csv(results, out, 3) == out
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "label", "prob", "label_2", "prob_2", "label_3", "prob_3", "error"]
    assert len(rows) == 73 and rows[1][0] == str(pngs / "img00.png")  # sorted, the hidden file left out
    classes = load_dataset("fashion-mnist-sample")[0].classes
    for row in rows[1:71]:
        probs = [float(row[i]) for i in (2, 4, 6)]
        assert row[1] in classes and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert row[7] == ""
    broken, missing = rows[71], rows[72]
    assert broken[0].endswith("zz_broken.png") and broken[1:7] == [""] * 6 and "not an image" in broken[7]
    assert missing[7].endswith("missing.png: no such file")
    # the same labels as decoding file by file (the small-batch in-process path)
    few = predict_files(run, [pngs / "img00.png", pngs / "img01.png"])
    assert [p.top[0][0] for p in few] == [rows[1][1], rows[2][1]]


def test_a_fifo_and_a_looping_link_are_named_not_missing(run, tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    results = predict_files(run, [tmp_path / "fifo.png", tmp_path / "loop.png"])
    assert [r.error for r in results] == [f"{tmp_path}/fifo.png: a FIFO, not a file",
                                          f"{tmp_path}/loop.png: a symbolic link that loops"]


def test_csv_out_a_folder_suggests_a_file_in_it(run, pngs, tmp_path):
    results = predict_files(run, [pngs / "img00.png"], top_k=1)
    (tmp_path / "preds").mkdir()
    with pytest.raises(CnnlabError, match=r"it is a folder; give a file name, e.g. .*preds/predictions.csv$"):
        write_csv(results, tmp_path / "preds", 1)
    assert not any((tmp_path / "preds").iterdir())


def test_csv_columns_stop_at_the_class_count(run, pngs, tmp_path):
    results = predict_files(run, [pngs / "img00.png"], top_k=50)
    assert len(results[0].top) == 10  # only 10 classes
    header = next(csv.reader(write_csv(results, tmp_path / "p.csv", 50).open()))
    assert header[-3:] == ["label_10", "prob_10", "error"] and len(header) == 2 * 10 + 2


def test_grid_png_of_a_folder(run, pngs, tmp_path):
    grid = tmp_path / "grid.png"
    results = predict_files(run, [pngs], keep_images=GRID_MAX)
    assert sum(r.image is not None for r in results) == 70  # the broken file has no pixels
    assert write_grid(results, grid) == grid
    pixels = imread(grid)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500  # 7 rows x 10 columns of panels
    assert float(pixels[..., :3].std()) > 0.05
    with pytest.raises(CnnlabError, match="nothing to draw for the `grid`"):
        write_grid(predict_files(run, [pngs / "img00.png"]), tmp_path / "none.png")  # no images kept


def test_folder_expansion_and_pool_decode_agree_with_in_process(pngs, test_set):
    from cnnlab.serve.predict import expand

    paths = expand([pngs])
    assert len(paths) == 71 and paths[-1].name == "zz_broken.png"
    pooled = list(decode_chunks(paths, (1, 28, 28), "squash"))  # 71 files: worker processes
    single = list(decode_chunks(paths, (1, 28, 28), "squash", chunk=10))  # chunks below the pool size
    assert len(pooled) == 1 and len(single) == 8
    _, pixels, errors = pooled[0]
    assert list(errors) == [70] and "not an image" in errors[70]
    assert torch.equal(torch.from_numpy(pixels[:70]), test_set.images[:70])
    assert np.array_equal(np.concatenate([p for _, p, _ in single])[:70], pixels[:70])
    assert single[-1][2] == {0: errors[70]}  # same message either way


def test_predictor_single_image_api(run, test_set):
    p = Predictor.from_run(run, "auto")
    assert p.engine in ("torch", "onnx") and set(p.latency) == {"torch", "onnx"}
    assert p.engine == min(p.latency, key=p.latency.get)
    img = test_set.images[3]
    probs = p.predict(img)  # one (C, H, W) image, a torch tensor
    assert probs.shape == (1, 10) and probs.dtype == np.float32
    ref = Predictor.from_run(run, "torch").predict(img.numpy())
    assert np.abs(probs - ref).max() <= 1e-4
    [(label, prob)] = p.top_k(probs, 1)[0]
    assert label == p.classes[int(ref.argmax())] and prob == pytest.approx(float(ref.max()), abs=1e-4)
    with pytest.raises(CnnlabError, match=r"images must be uint8 \(N, 1, 28, 28\)"):
        p.predict(img.float())
    with pytest.raises(CnnlabError, match="got uint8 \\(1, 3, 28, 28\\)"):
        p.predict(np.zeros((1, 3, 28, 28), np.uint8))


def test_stale_onnx_is_exported_again(run, tmp_path, test_set):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    Predictor.from_run(copy, "onnx", log=lambda s: None)  # model.onnx of the trained weights
    weights = load_file(copy / "model.safetensors")
    save_file({k: v * 1.5 if k.endswith("weight") else v for k, v in weights.items()}, copy / "model.safetensors")
    notes: list[str] = []
    p = Predictor.from_run(copy, "onnx", log=notes.append)
    assert any("exported from other weights" in n for n in notes)
    x = test_set.images[:50].numpy()
    assert np.abs(p.predict(x) - Predictor.from_run(copy, "torch").predict(x)).max() <= 1e-4


def test_predict_mistakes_are_one_line_errors(run, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    (target / "model.onnx").write_bytes(b"\x08\x07garbage")
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(img)
    cases = [
        (lambda: predict_files(target, [img], engine="onnx"), "model.onnx is not a usable ONNX model"),
        (lambda: predict_files(target, [img], engine="tensorrt"), "^unknown engine 'tensorrt'; valid: auto, onnx, torch$"),
        (lambda: predict_files(target, [img], top_k=0), "^`top_k` is 0; ask for at least 1 label"),
        (lambda: predict_files(tmp_path / "norun", [img]), "is not a directory; pass a run directory"),
        (lambda: Predictor.from_run(target, "torch", batch_size=0), "batch_size must be ≥ 1"),
    ]
    (tmp_path / "none").mkdir()
    cases.append((lambda: predict_files(target, [tmp_path / "none"]), "no image files given"))
    for call, message in cases:
        with pytest.raises(CnnlabError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_any_pillow_format_in_a_folder_predicts_like_png(run, test_set, tmp_path):
    """A folder of TIFFs and 16-bit PNGs predicts as the 8-bit PNGs do; other files are named in one note."""
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(3):
        pixels = test_set.images[i, 0].numpy()
        Image.fromarray(pixels).save(root / f"{i}.png")
        Image.fromarray(pixels).save(root / f"{i}.tif")
        Image.fromarray(pixels.astype(np.uint16) * 257).save(root / f"{i}.wide.png")  # 16-bit: 257·k is k
    (root / "notes.txt").write_text("x")
    notes: list[str] = []
    results = predict_files(run, [root], top_k=2, log=notes.append)
    assert [r.path.name for r in results] == ["0.png", "0.tif", "0.wide.png", "1.png", "1.tif", "1.wide.png",
                                              "2.png", "2.tif", "2.wide.png"]
    assert all(r.error is None for r in results)
    for k in range(3):
        assert results[3 * k].top == results[3 * k + 1].top == results[3 * k + 2].top
    assert notes == [f"note: skipped 1 file in {root} that is not an image (Pillow cannot read it): notes.txt"]
    only_notes = tmp_path / "docs"
    only_notes.mkdir()
    (only_notes / "a.txt").write_text("x")
    with pytest.raises(CnnlabError, match=r"^no image files given; skipped 1 file that is not an image .*a.txt; "
                                          "give image files"):
        predict_files(run, [only_notes], log=notes.append)
