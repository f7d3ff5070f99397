"""One experiment's data: validation splits, normalisers, and folders of images (a lazy split of the
memory-mapped cache), trained on and predicted from end to end."""

import json

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data.prepare import make_normalizer, prepare_data
from cnnlab.data.tensors import IMAGENET, ImageData, Normalizer, RowView, batches
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config
from cnnlab.serve.predict import predict_files


def test_folder_split_is_lazy_and_complete(image_folder):
    cfg = load_config(None, [("data.dataset", f"folder:{image_folder}"), ("data.image_size", 24), ("data.val_split", 0.25)]).data
    data = prepare_data(cfg, log=lambda s: None)
    assert isinstance(data.train.images, RowView) and isinstance(data.test.images, RowView)
    assert len(data.train) == 90 and len(data.test) == 30 and data.train.classes == ("sneaker", "trouser", "tshirt")
    x, y = next(batches(data.train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.uint8 and y.shape == (16,)
    rows = data.train.images.rows[:4]
    assert torch.equal(data.train.images[:4], data.train.images.base[rows])


def test_folder_report_goes_to_the_log_and_image_size_is_required(image_folder):
    lines: list[str] = []
    cfg = load_config(None, [("data.dataset", f"folder:{image_folder}"), ("data.image_size", 8)]).data
    data = prepare_data(cfg, log=lines.append)
    assert any("tshirt" in line for line in lines) and data.report.counts == {"sneaker": 40, "trouser": 40,
                                                                              "tshirt": 40}
    assert (len(data.train), len(data.test)) == (96, 24) and data.val is data.test  # 20% held out by default
    with pytest.raises(CnnlabError, match="folder datasets need `?data.image_size"):
        prepare_data(load_config(None, [("data.dataset", f"folder:{image_folder}")]).data, log=lines.append)


def test_validation_is_the_test_set_or_a_held_out_part_of_training():
    plain = prepare_data(load_config(None, [("data.dataset", "fashion-mnist-sample")]).data)
    assert plain.val is plain.test and len(plain.train) == 6000 and plain.report is None
    assert plain.note == "validating on the 1,000 test images (as the tutorials do)"
    held = prepare_data(load_config(None, [("data.dataset", "fashion-mnist-sample"), ("data.val_split", 1000)]).data)
    assert (len(held.train), len(held.val), len(held.test)) == (5000, 1000, 1000)
    assert held.note == "validating on 1,000 held-out training images, testing on 1,000"
    assert held.normalizer == Normalizer()  # auto, no pretrained weights: x / 255


def test_normalizers(toy):
    assert make_normalizer("unit", toy) == Normalizer() == make_normalizer("auto", toy)
    fitted = make_normalizer("standard", toy)
    assert fitted == Normalizer.fit(toy) and fitted.mean[0] > 0.1
    grey = make_normalizer("imagenet", toy)  # one channel: the mean of ImageNet's three statistics
    assert grey.mean == pytest.approx((sum(IMAGENET.mean) / 3,)) and grey.std == pytest.approx((sum(IMAGENET.std) / 3,))
    rgb = ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), ("a",))
    assert make_normalizer("imagenet", rgb) == IMAGENET
    raw = make_normalizer("raw", toy)  # the 0..255 values themselves, exactly (the TF tutorial's inputs)
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(raw(x), x.float())
    # augmented batches come as x / 255 floats: dividing by float32(1/255) is within a few ulps of x
    assert torch.allclose(raw.from_unit(x.float() / 255), x.float(), rtol=1e-6, atol=0)
    assert torch.allclose(raw.denormalize(raw(x)), x.float() / 255, rtol=0, atol=1e-7)  # the same ulps, for display


def test_train_and_predict_on_a_folder(image_folder, tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = experiment_config(dataset=f"folder:{image_folder}", model="cnn_32x1", epochs=3, batch_size=16,
                            overrides=[("data.image_size", 28), ("data.grayscale", True)])
    assert train(cfg, out=out, progress=False, log=lines.append).failed is None
    assert "tshirt" in "\n".join(lines)  # the folder report (counts per class) is logged
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"] == {"sneaker": 40, "trouser": 40, "tshirt": 40}
    # measured 23 of 24 test images right; one image of margin for float noise (chance is 8 of 24)
    assert json.loads((out / "results.json").read_text())["test_acc"] >= 22 / 24
    results = predict_files(out, [image_folder / "trouser"], top_k=1)
    assert len(results) == 40 and all(r.error is None and len(r.top) == 1 for r in results)
    assert sum(r.top[0][0] == "trouser" for r in results) >= 36


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mnist_images_written_to_a_folder_with_file_name_labels(real_data, tmp_path):
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
    lines: list[str] = []
    cfg = experiment_config(dataset=f"folder:{folder}", model="cnn_32x1", epochs=3, batch_size=32,
                            overrides=[("data.image_size", 28), ("data.grayscale", True), ("data.labels", "filename")])
    assert train(cfg, out=out, progress=False, log=lines.append).failed is None
    assert "broken.7.png" in "\n".join(lines)  # the skipped file is listed in the log (on screen in the CLI)
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"] == {w: 150 for w in sorted(words)} and len(report["skipped"]) == 1
    # measured 115 of 120; two images of margin for float noise (chance is 30 of 120)
    assert json.loads((out / "results.json").read_text())["test_acc"] >= 113 / 120
