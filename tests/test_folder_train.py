"""Training on a folder of images: labels from subfolders, a lazy split of the memory-mapped cache."""

import json

import pytest
import torch

from cnnlab.cli import main
from cnnlab.config import load_config
from cnnlab.data.prepare import prepare_data
from cnnlab.data.tensors import RowView, batches


def test_folder_split_is_lazy_and_complete(image_folder):
    cfg = load_config(None, [("data.dataset", f"folder:{image_folder}"), ("data.image_size", 24), ("data.val_split", 0.25)]).data
    data = prepare_data(cfg, log=lambda s: None)
    assert isinstance(data.train.images, RowView) and isinstance(data.test.images, RowView)
    assert len(data.train) == 90 and len(data.test) == 30 and data.train.classes == ("sneaker", "trouser", "tshirt")
    x, y = next(batches(data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.uint8 and y.shape == (16,)
    rows = data.train.images.rows[:4]
    assert torch.equal(data.train.images[:4], data.train.images.base[rows])


def test_train_and_predict_on_a_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{image_folder}", "--set", "data.image_size=28", "--set", "data.grayscale=true",
            "--model", "cnn_32x1", "--epochs", "3", "--batch-size", "16", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "tshirt" in text  # the folder report (counts per class) is printed
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"] == {"sneaker": 40, "trouser": 40, "tshirt": 40}
    assert json.loads((out / "results.json").read_text())["test_acc"] > 0.8
    assert main(["predict", str(out), str(image_folder / "trouser"), "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 40 and sum(": trouser " in ln for ln in lines) >= 36


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mnist_images_written_to_a_folder_with_file_name_labels(real_data, tmp_path, capsys):
    """MNIST test digits as PNG files named like Kaggle's cat.123.jpg (digit word as the label) → train → predict."""
    from PIL import Image

    from cnnlab.data.datasets import load_dataset

    words = ("zero", "one", "two", "three")
    _, test = load_dataset("mnist", real_data)
    folder = tmp_path / "digits"
    folder.mkdir()
    for label, word in enumerate(words):
        for k, i in enumerate(torch.nonzero(test.labels == label).flatten()[:150].tolist()):
            Image.fromarray(test.images[i, 0].numpy()).save(folder / f"{word}.{k}.png")
    (folder / "broken.7.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{folder}", "--set", "data.image_size=28", "--set", "data.grayscale=true",
            "--set", "data.labels=filename", "--model", "cnn_32x1", "--epochs", "3", "--batch-size", "32",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "broken.7.png" in capsys.readouterr().out  # the skipped file is listed on screen
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"] == {w: 150 for w in sorted(words)} and len(report["skipped"]) == 1
    assert json.loads((out / "results.json").read_text())["test_acc"] > 0.9
