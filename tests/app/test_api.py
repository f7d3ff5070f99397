"""The public Python face: ``import cnnlab`` then train, load, evaluate, predict, show, report, summarise."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

import cnnlab
from cnnlab.errors import CnnlabError


def test_train_returns_a_finished_run_with_the_keyword_options_applied(run):
    assert isinstance(run, cnnlab.Run) and run.status == "done"
    cfg = run.config
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.dataset) == (2, 256, "fashion-mnist-sample")
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert run.results["test_acc"] == pytest.approx(run.evaluate().acc, abs=1e-3)  # bf16 training vs fp32 eval


def test_models_create_and_summary():
    assert "cnn_64x2" in cnnlab.list_models() and "resnet18" in cnnlab.list_models()
    model = cnnlab.create_model("cnn_64x2")  # the tutorial's input and 10 classes by default
    assert isinstance(model, nn.Module) and sum(p.numel() for p in model.parameters()) == 243_786
    r18 = cnnlab.create_model("resnet18", input_shape=(3, 32, 32), num_classes=5)
    assert r18.fc.out_features == 5
    assert "Total params: 243,786" in cnnlab.summary("cnn_64x2")
    assert "Total params: 243,786" in cnnlab.summary(model, input_shape=(1, 28, 28))
    assert "Total params: 243,786" in cnnlab.summary("fashion_mnist_cnn")  # a packaged config by name
    with pytest.raises(CnnlabError, match="`input_shape`"):
        cnnlab.summary(model)


def test_summary_of_a_folder_config_uses_its_data_section(tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.new("RGB", (60, 40)).save(tmp_path / "pets" / name / f"{name}.1.png")
    cfg = cnnlab.load_config(None, [("data.dataset", f"folder:{tmp_path / 'pets'}"), ("data.image_size", 50),
                                     ("model.name", "vgg16")])
    assert "Total params: 33,605,442" in cnnlab.summary(cfg)  # Keras's VGG-16 at 50x50x3 with 2 classes
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="no labelled images.*`num_classes`"):
        cnnlab.summary(cnnlab.load_config(None, [("data.dataset", f"folder:{tmp_path / 'empty'}"),
                                                 ("data.image_size", 50)]))


def test_import_is_light_and_the_api_works_from_a_fresh_interpreter():
    code = ("import sys, cnnlab; assert 'torch' not in sys.modules, 'import cnnlab loaded torch';"
            "print(cnnlab.__version__, len(cnnlab.list_models()) > 20, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [cnnlab.__version__, "True", "True"]


TRAIN_AND_RESUME = """
import sys, cnnlab
layers = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "Flatten"},
          {"type": "Dense", "units": "num_classes", "activation": "softmax"}]
options = dict(progress=False, log=lambda s: None)
run = cnnlab.train(dataset="fashion-mnist-sample", out=sys.argv[1], epochs=1, batch_size=64, **options,
                   overrides={"model.layers": layers, "train.steps_per_epoch": 3, "train.ema": 0.9,
                              "train.schedule": "cosine", "train.l2": 1e-4})
resumed = cnnlab.train(resume=sys.argv[1], epochs=2, **options)
print(run.status, resumed.status, len(resumed.history), sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""


def test_training_and_resuming_never_import_torch_dynamo(tmp_path):
    # torch.optim imports torch._dynamo (~1 s of start-up); cnnlab's optimisers and training path must not
    out = subprocess.run([sys.executable, "-c", TRAIN_AND_RESUME, str(tmp_path / "run")], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["done", "done", "2", "[]"]


def test_lr_find_from_python_returns_the_finding_and_its_png(tmp_path):
    found, path = cnnlab.lr_find(model="dnn_128", dataset="fashion-mnist-sample", batch_size=256, steps=20,
                                 start_lr=1e-4, end_lr=1.0, out=tmp_path / "lr.png", log=lambda s: None)
    assert path == tmp_path / "lr.png" and path.is_file()
    assert len(found.lrs) <= 20 and found.lrs[0] == pytest.approx(1e-4)
    assert cnnlab.lr_find(model="dnn_128", dataset="fashion-mnist-sample", steps=14, out=None,
                          log=lambda s: None)[1] is None
