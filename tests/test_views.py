"""Views of small real runs (bundled Fashion-MNIST sample): every view renders a non-blank PNG, options reach
the views, mistakes are one-line errors; the picks behind the prediction views; the augmentation preview."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.views import (
    VIEWS,
    ShowOptions,
    ViewContext,
    applicable,
    augment_preview,
    cell_images,
    random_predictions,
    render,
    show,
    top_mistakes,
)


def _nonblank(path):
    arr = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return arr.std() > 5


@pytest.mark.slow
def test_all_views_of_a_cnn(small_cnn_run):
    paths = [str(p) for p in show(small_cnn_run, "all", ShowOptions(n=4))]
    names = {p.split("/")[-1] for p in paths}
    expected = {"curves.png", "predictions.png", "mistakes.png", "mistakes-breakdown.png", "feature-maps.png",
                "feature-maps-conv2d.png", "filters.png", "occlusion.png", "gradcam.png", "saliency.png",
                "maximize-filters.png", "maximize-classes.png", "kernels.png", "architecture.png"}
    assert expected <= names and "templates.png" not in names
    assert all(_nonblank(p) for p in paths)
    assert all(str(small_cnn_run / "figures") in p for p in paths)


def test_templates_for_a_dense_net(dnn_run, tmp_path):
    (path,) = show(dnn_run, "templates", out=tmp_path)
    assert path == tmp_path / "templates.png" and _nonblank(path)


def test_feature_maps_options(small_cnn_run, tmp_path):
    opts = ShowOptions(images=(1, 2), layers=("conv2d_1",), filter=3)
    paths = show(small_cnn_run, "feature-maps", opts, out=tmp_path)
    assert {p.name for p in paths} == {"feature-maps.png", "feature-maps-conv2d_1.png"}
    assert all(p.parent == tmp_path for p in paths)


@pytest.mark.parametrize("what, options, message", [
    ("feature-maps", ShowOptions(layers=("conv9",)), "conv9"),
    ("feature-maps", ShowOptions(images=(99999,)), "^`images` 99999 is out of range; the test set has 1,000 images"),
    ("feature-maps", ShowOptions(filter=50), "8"),
    ("templates", ShowOptions(), "fully-connected"),
    ("heatmap", ShowOptions(), "unknown view 'heatmap'; valid: all, architecture"),
    ("curves", ShowOptions(n=0), "^`n` is 0; views draw at least 1 image or filter$"),
])
def test_bad_view_options_are_one_line_errors(small_cnn_run, tmp_path, what, options, message):
    with pytest.raises(CnnlabError, match=message) as err:
        show(small_cnn_run, what, options, out=tmp_path)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_render_returns_figures_by_the_names_show_saves(small_cnn_run, dnn_run):
    ctx = ViewContext(small_cnn_run)
    figs = render(ctx, "architecture")
    assert list(figs) == ["architecture"] and isinstance(figs["architecture"], Figure)
    assert list(render(ctx, "curves")) == ["curves"]
    assert "templates" not in applicable(ctx) and "feature-maps" in applicable(ctx)
    dense = applicable(ViewContext(dnn_run))
    assert "templates" in dense and not {"feature-maps", "filters", "occlusion", "gradcam", "maximize"} & set(dense)
    assert set(applicable(ctx)) | {"templates"} == set(VIEWS.names())
    assert torch.equal(ctx.images([3]), ctx.test.images[[3]]) and ctx.x([3]).dtype == torch.float32


def test_prediction_picks():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.95, 0.05]])
    labels = torch.tensor([1, 1, 1, 0])
    assert top_mistakes(probs, labels, 5).tolist() == [0, 2]  # the most confident mistake first
    assert sorted(random_predictions(probs, 3, seed=0).tolist()) == sorted(set(random_predictions(probs, 3, seed=0).tolist()))
    assert set(VIEWS.names()) >= {"curves", "predictions", "mistakes", "feature-maps", "filters", "templates",
                                  "occlusion", "maximize", "gradcam", "saliency", "kernels", "architecture"}


def test_augment_preview_writes_a_grid(tmp_path):
    cfg = load_config(None, base={"data": {"dataset": "fashion-mnist-sample",
                                           "augment": {"hflip": True, "rotation": 10, "cutout": 6}}})
    out = tmp_path / "aug.png"
    assert augment_preview(cfg, out, n=3, copies=4) == out
    img = Image.open(out)
    assert img.size[0] > 300 and img.size[1] > 200
    off = load_config(None, [("data.augment.hflip", False), ("data.augment.rotation", 0),
                             ("data.augment.cutout", 0)], base={"data": {"dataset": "fashion-mnist-sample"}})
    with pytest.raises(CnnlabError, match="enables no augmentation"):
        augment_preview(off, tmp_path / "none.png")
    with pytest.raises(CnnlabError, match="n=0 and copies=4 must both be ≥ 1"):
        augment_preview(cfg, tmp_path / "none.png", n=0, copies=4)
    assert not (tmp_path / "none.png").exists()


def test_defaults_adapt_to_a_small_test_set_and_all_keeps_going(tmp_path, image_folder):
    from cnnlab.runs.experiment import train
    from cnnlab.runs.options import experiment_config

    cfg = experiment_config(dataset=f"folder:{image_folder}", model="cnn_32x1", epochs=1, batch_size=32,
                            overrides=[("data.image_size", 28), ("data.grayscale", True)])
    run = train(cfg, out=tmp_path / "run", progress=False, log=lambda s: None).run.path  # 24 test images
    notes: list[str] = []
    paths = show(run, "feature-maps", out=tmp_path / "f", log=notes.append)
    assert [p.name for p in paths] == ["feature-maps.png", "feature-maps-conv2d.png"]
    assert notes == ["note: the test set has 24 images, so the default images [0, 7, 26] became [0, 7]"]
    with pytest.raises(CnnlabError, match="`images` 26 is out of range"):  # what the user asks is not adapted
        show(run, "feature-maps", ShowOptions(images=(26,)), out=tmp_path / "f")


def test_all_draws_every_view_it_can_and_lists_the_others(small_cnn_run, tmp_path, monkeypatch):
    def broken(ctx, opts):
        raise CnnlabError("this view cannot be drawn here")

    monkeypatch.setitem(VIEWS._items, "kernels", broken)
    notes: list[str] = []
    drawn = show(small_cnn_run, "all", ShowOptions(n=4), out=tmp_path, log=notes.append)
    assert notes == ["note: kernels not drawn: this view cannot be drawn here"]
    assert "kernels.png" not in {p.name for p in drawn}
    assert {"curves.png", "feature-maps.png", "filters.png", "gradcam.png"} <= {p.name for p in drawn}
    monkeypatch.setattr("cnnlab.views.applicable", lambda ctx: ["kernels"])
    with pytest.raises(CnnlabError, match="no view could be drawn: kernels not drawn: this view cannot be drawn"):
        show(small_cnn_run, "all", out=tmp_path)


def test_a_confusion_cell_lists_its_images_highest_loss_first():
    probs = torch.tensor([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.05, 0.95], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 0, 0, 1])
    idx, losses = cell_images(probs, labels, 0, 1)  # true 0, predicted 1: images 0, 1, 3
    assert idx.tolist() == [3, 0, 1]  # p(true) 0.05 < 0.2 < 0.4: the most confident mistake first
    np.testing.assert_allclose(losses.numpy(), -np.log([0.05, 0.2, 0.4]), rtol=1e-6)
    assert cell_images(probs, labels, 0, 0)[0].tolist() == [2]
    assert cell_images(probs, labels, 1, 0)[0].tolist() == []
    with pytest.raises(CnnlabError, match=r"confusion cell \(2, 0\) does not exist; classes are 0..1"):
        cell_images(probs, labels, 2, 0)
