"""Setting up a training: the config resolved as the run records it, the callbacks it asks for."""

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.runs.options import experiment_config
from cnnlab.runs.setup import build_callbacks
from cnnlab.training.callbacks import (
    CheckpointEvery,
    EarlyStopping,
    ModelCheckpoint,
    NanGuard,
    StallWarning,
    StopAtTarget,
)
from cnnlab.training.progressbar import ProgressBar


def test_callbacks_follow_the_config():
    cfg = load_config(None, [("callbacks.stop_at", ["val_acc=0.9"]), ("callbacks.early_stopping", 3),
                             ("callbacks.monitor", "val_acc")])
    callbacks = build_callbacks(cfg, progress=False)
    assert [type(cb) for cb in callbacks] == [NanGuard, StopAtTarget, EarlyStopping, ModelCheckpoint,
                                              CheckpointEvery, ProgressBar, StallWarning]
    stop, early, checkpoint = callbacks[1:4]
    assert (stop.monitor, stop.mode, stop.target) == ("val_acc", "max", 0.9)
    assert (early.monitor, early.mode, early.patience) == ("val_acc", "max", 3)
    assert (checkpoint.monitor, checkpoint.mode) == ("val_acc", "max")
    assert not callbacks[-2].live  # the ProgressBar
    plain = build_callbacks(load_config())
    assert [type(cb) for cb in plain] == [NanGuard, ModelCheckpoint, CheckpointEvery, ProgressBar, StallWarning]
    assert (plain[1].monitor, plain[1].mode) == ("val_loss", "min")
    assert (plain[2].steps, plain[2].seconds) == (0, 300.0)  # the default: part-way every 5 minutes
    by_steps = build_callbacks(load_config(None, [("callbacks.checkpoint_every", "500steps")]))[2]
    assert (by_steps.steps, by_steps.seconds) == (500, 0.0)
    off = build_callbacks(load_config(None, [("callbacks.checkpoint_every", "off")]))
    assert [type(cb) for cb in off] == [NanGuard, ModelCheckpoint, ProgressBar, StallWarning]


def test_relative_folders_are_recorded_absolute_and_get_the_models_input_size(tmp_path, image_folder, monkeypatch):
    from cnnlab.runs.setup import resolve_config

    monkeypatch.chdir(image_folder.parent)
    cfg = resolve_config(experiment_config(dataset=f"folder:{image_folder.name}", model="resnet18",
                                           data_dir="."))
    assert cfg.data.dataset == f"folder:{image_folder}" and cfg.data.data_dir == str(image_folder.parent)
    assert cfg.data.image_size == 224  # resnet18's metadata
    pretrained = resolve_config(experiment_config(dataset="folder:x", model="inception_v3", pretrained=True))
    assert pretrained.data.image_size == 299  # the published weights' input size


def test_an_unset_learning_rate_follows_the_models_metadata():
    from cnnlab.runs.setup import default_lr, resolve_config

    def lr(**options):
        overrides = options.pop("overrides", [])
        return resolve_config(experiment_config(dataset="fashion-mnist-sample", overrides=overrides, **options)).train.lr

    assert experiment_config(model="vgg16").train.lr is None  # "not set" is None, never a number
    assert lr(model="vgg16") == 1e-4 and lr(model="alexnet") == 1e-4  # no BatchNorm: ten times lower
    assert lr(model="vgg16_bn") == 1e-3 and lr(model="resnet18") == 1e-3
    assert lr(model="vgg16", lr=0.001) == 0.001  # a rate the user wrote is kept, even the generic one
    assert lr(model="vgg16", overrides=[("train.lr", 0.001)]) == 0.001
    assert lr(model="vgg16", overrides=[("train.optimizer", "sgd")]) == 1e-3  # the metadata rate is Adam's
    assert lr(model="dnn_128") == 1e-3  # the tutorial models: Keras's Adam default
    assert default_lr(experiment_config(model="vgg16")) == (1e-4, "vgg16's default for adam (its metadata)")


def test_weights_in_a_published_layout_bring_their_preprocessing(tmp_path, image_folder):
    from cnnlab.models.registry import IMAGENET_MEAN, create_model
    from cnnlab.runs.setup import resolve_config, weights_normalizer

    torch.manual_seed(0)
    torch.save(create_model("googlenet", num_classes=1000, input_shape=(3, 224, 224)).state_dict(),
               tmp_path / "copy.pth")  # torchvision's layout, as a downloaded googlenet-1378be20.pth has
    notes: list[str] = []
    cfg = resolve_config(experiment_config(model="googlenet", weights=str(tmp_path / "copy.pth"),
                                           dataset=f"folder:{image_folder}"), notes.append)
    assert cfg.model.pretrained and cfg.data.image_size == 224  # the weights' input size
    assert weights_normalizer(cfg).mean == IMAGENET_MEAN
    assert notes[-1].startswith(f"note: {tmp_path / 'copy.pth'} has googlenet's published ImageNet layout, so it "
                                "gets their preprocessing as model.pretrained does: mean [0.485, 0.456, 0.406]")
    assert "transform_input, 224 px input (data.normalize and data.image_size change them)" in notes[-1]
    torch.save(create_model("googlenet", num_classes=3, input_shape=(3, 64, 64)).state_dict(), tmp_path / "mine.pth")
    notes.clear()
    mine = resolve_config(experiment_config(model="googlenet", weights=str(tmp_path / "mine.pth"),
                                            dataset=f"folder:{image_folder}"), notes.append)
    assert not mine.model.pretrained and weights_normalizer(mine) is None
    assert notes[-1] == (f"note: {tmp_path / 'mine.pth'} is not googlenet's published ImageNet weight file, so inputs "
                         "are scaled as for training from scratch (x / 255); if these weights expect other "
                         "statistics, set data.normalize (imagenet, standard)")
    notes.clear()
    resolve_config(experiment_config(model="googlenet", weights=str(tmp_path / "mine.pth"), dataset="mnist",
                                     overrides=[("data.normalize", "standard")]), notes.append)
    assert not any("published" in n for n in notes)  # the user chose the scaling: nothing to say


# ------------------------------------------------------------------------ the frozen backbone's feature cache


def _frozen(*overrides, **options):
    return experiment_config(model="resnet18", freeze="backbone", overrides=list(overrides), **options)


def test_the_feature_cache_is_the_default_for_a_frozen_backbone_without_augmentation():
    from cnnlab.errors import CnnlabError
    from cnnlab.runs.setup import feature_cache

    lines: list[str] = []
    cache = feature_cache(_frozen(), "fc", lines.append)
    assert cache is not None and cache.head == "fc" and not cache.required and lines == []
    assert feature_cache(_frozen(cache_features="on"), "fc", lines.append).required
    assert feature_cache(_frozen(cache_features="off"), "fc", lines.append) is None and lines == []
    for overrides, why in ((("data.augment.hflip", True),), "`data.augment` changes the images every epoch"), \
            ((("model.train_bn", True),), "its BatchNorm layers keep training (`model.train_bn`)"):
        assert feature_cache(_frozen(*overrides), "fc", lines.append) is None
        assert lines.pop() == f"note: the frozen backbone's features are recomputed every epoch: {why}"
        with pytest.raises(CnnlabError, match="`train.cache_features` is on but the backbone's features change"):
            feature_cache(_frozen(*overrides, cache_features="on"), "fc", lines.append)
    fine_tune = experiment_config(model="resnet18", fine_tune=True)  # the backbone trains from epoch 2
    assert feature_cache(fine_tune, "fc", lines.append) is None
    assert "unfrozen after epoch 1 (`model.freeze_epochs`)" in lines.pop()


def test_cache_features_on_without_a_frozen_backbone_is_refused(toy):
    import pytest

    from cnnlab.data.prepare import Data
    from cnnlab.data.tensors import Normalizer
    from cnnlab.errors import CnnlabError
    from cnnlab.runs.setup import build_trainer

    cfg = experiment_config(cache_features="on", overrides=[("train.lr", 0.01)])
    data = Data(toy, toy, toy, Normalizer(), "toy")
    with pytest.raises(CnnlabError, match="`train.cache_features` is on but nothing is frozen"):
        build_trainer(cfg, data, [], None)
    off = build_trainer(experiment_config(overrides=[("train.lr", 0.01)]), data, [], None)
    assert off.features is None


def test_a_frozen_run_trains_on_cached_features_and_is_a_whole_model_run(tmp_path, image_folder):
    from safetensors.torch import load_file

    from cnnlab.runs.experiment import train
    from cnnlab.runs.loaded import evaluate_run

    def run(out, epochs, cache_features=None, **kw):
        lines: list[str] = []
        cfg = experiment_config(dataset=f"folder:{image_folder}", model="resnet18", freeze="backbone", epochs=epochs,
                                batch_size=24, cache_features=cache_features, overrides=[("data.image_size", 32), ("train.lr", 0.01),
                                                          ("train.precision", "fp32")])
        result = train(cfg, out=out, progress=False, log=lines.append, **kw)
        assert result.failed is None
        return result, "\n".join(lines)

    result, log = run(tmp_path / "cached", 2)
    assert ("Cached the frozen backbone's features once: 96 train + 24 validation images, (512,) float32 each, "
            "0.2 MB") in log and "each epoch trains the head (fc) on them" in log
    weights = load_file(tmp_path / "cached" / "model.safetensors")
    assert "layer4.1.conv2.weight" in weights and weights["fc.weight"].shape == (3, 512)  # backbone + head
    loaded, evaluation, _ = evaluate_run(tmp_path / "cached")  # the whole model, images in
    assert evaluation.acc == result.test.acc and evaluation.loss == pytest.approx(result.test.loss, rel=1e-6)
    # resumed after epoch 1: the cache is built again and the run ends where the straight one did
    run(tmp_path / "resumed", 1)
    resumed, log = run(None, 2, resume=tmp_path / "resumed")
    assert "Cached the frozen backbone's features once" in log
    again = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(again[k], v) for k, v in weights.items())
    plain, log = run(tmp_path / "plain", 2, cache_features="off")
    assert "Cached" not in log
    # 96 training images in steps of 24: every image goes through the backbone in a batch of 24 either way (fp32)
    assert all(torch.equal(load_file(tmp_path / "plain" / "model.safetensors")[k], v) for k, v in weights.items())
    assert plain.history[-1]["val_acc"] == result.history[-1]["val_acc"]
