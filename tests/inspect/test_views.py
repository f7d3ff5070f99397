"""`cnnlab show` on small real runs (bundled Fashion-MNIST sample): every view renders a non-blank PNG."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.views import VIEWS, random_predictions, top_mistakes

SMALL_CNN = ["--set", "model.layers=[{type: Conv2D, filters: 8, kernel_size: 3, activation: relu}, {type: MaxPooling2D},"
             " {type: Conv2D, filters: 8, kernel_size: 3, activation: relu}, {type: MaxPooling2D}, {type: Flatten},"
             " {type: Dense, units: num_classes, activation: softmax}]"]


def _train(tmp, extra):
    out = tmp / "run"
    argv = ["train", "--dataset", "fashion-mnist-sample", "--epochs", "1", "--batch-size", "128", "--no-progress",
            "--out", str(out), *extra]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("cnn"), SMALL_CNN)


@pytest.fixture(scope="module")
def dnn_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("dnn"), ["--model", "dnn_128"])


def _nonblank(path):
    arr = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return arr.std() > 5


@pytest.mark.slow
def test_all_views_of_a_cnn(cnn_run, capsys):
    assert main(["show", str(cnn_run), "all", "-n", "4"]) == 0
    paths = capsys.readouterr().out.split()
    names = {p.split("/")[-1] for p in paths}
    expected = {"curves.png", "predictions.png", "mistakes.png", "mistakes-breakdown.png", "feature-maps.png",
                "feature-maps-conv2d.png", "filters.png", "occlusion.png", "gradcam.png", "saliency.png",
                "maximize-filters.png", "maximize-classes.png", "kernels.png", "architecture.png"}
    assert expected <= names and "templates.png" not in names
    assert all(_nonblank(p) for p in paths)
    assert all(str(cnn_run / "figures") in p for p in paths)


def test_templates_for_a_dense_net(dnn_run, tmp_path, capsys):
    assert main(["show", str(dnn_run), "templates", "--out", str(tmp_path)]) == 0
    (path,) = capsys.readouterr().out.split()
    assert path == str(tmp_path / "templates.png") and _nonblank(path)


def test_feature_maps_options(cnn_run, tmp_path, capsys):
    assert main(["show", str(cnn_run), "feature-maps", "--images", "1,2", "--layers", "conv2d_1", "--filter", "3",
                 "--out", str(tmp_path)]) == 0
    assert {p.split("/")[-1] for p in capsys.readouterr().out.split()} == {"feature-maps.png", "feature-maps-conv2d_1.png"}


@pytest.mark.parametrize("argv, message", [
    (["feature-maps", "--layers", "conv9"], "conv9"),
    (["feature-maps", "--images", "99999"], "out of range; the test set has 1,000 images"),
    (["feature-maps", "--filter", "50"], "8"),
    (["templates"], "fully-connected"),
    (["heatmap"], "unknown view 'heatmap'; valid: all, architecture"),
    (["feature-maps", "--images", "a,b"], "expected comma-separated"),
])
def test_bad_view_options_are_one_line_errors(cnn_run, argv, message, capsys):
    assert main(["show", str(cnn_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_prediction_picks():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.95, 0.05]])
    labels = torch.tensor([1, 1, 1, 0])
    assert top_mistakes(probs, labels, 5).tolist() == [0, 2]  # the most confident mistake first
    assert sorted(random_predictions(probs, 3, seed=0).tolist()) == sorted(set(random_predictions(probs, 3, seed=0).tolist()))
    assert set(VIEWS.names()) >= {"curves", "predictions", "mistakes", "feature-maps", "filters", "templates",
                                  "occlusion", "maximize", "gradcam", "saliency", "kernels", "architecture"}
