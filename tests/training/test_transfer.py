"""Transfer learning in training: local 'ImageNet' weights → new head, frozen backbone, fine-tuning."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cnnlab.models import create_model
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config
from cnnlab.training.transfer import BackboneFreeze, set_backbone_frozen


def _fake_imagenet_file(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def _train(folder, out, **options):
    """resnet18 on the folder at 32x32 grey, 2 epochs; returns the log lines."""
    lines: list[str] = []
    cfg = experiment_config(dataset=f"folder:{folder}", model="resnet18", epochs=2, batch_size=32,
                            overrides=[("data.image_size", 32), ("data.grayscale", True), ("train.lr", 0.01)],
                            **options)
    assert train(cfg, out=out, progress=False, log=lines.append).failed is None
    return "\n".join(lines)


def test_frozen_backbone_trains_only_the_new_head(tmp_path, image_folder):
    path, source = _fake_imagenet_file(tmp_path)
    out = tmp_path / "run"
    log = _train(image_folder, out, weights=str(path), freeze="backbone")
    assert "adapted conv1.weight" in log and "re-initialised fc" in log
    trained = load_file(out / "model.safetensors")
    assert trained["fc.weight"].shape == (3, 512)
    # grey input: the RGB kernels summed; untouched by training since the backbone is frozen
    assert torch.allclose(trained["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(trained["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])


def test_fine_tune_unfreezes_after_one_epoch(tmp_path, image_folder):
    path, source = _fake_imagenet_file(tmp_path)
    out = tmp_path / "run"
    assert "Epoch 2: backbone unfrozen" in _train(image_folder, out, weights=str(path), fine_tune=True)
    trained = load_file(out / "model.safetensors")
    assert not torch.equal(trained["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    meta = json.loads((out / "run.json").read_text())
    # a file in resnet's published layout brings ImageNet's preprocessing, as --pretrained does (grey images: the
    # mean of ImageNet's three channel means, (0.485 + 0.456 + 0.406) / 3)
    assert meta["normalizer"]["mean"] == [pytest.approx(0.449, abs=1e-6)]


def test_set_backbone_frozen_leaves_the_head_trainable():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    set_backbone_frozen(model, {"1.weight", "1.bias"}, True)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "0.weight": False, "0.bias": False, "1.weight": True, "1.bias": True}
    set_backbone_frozen(model, {"1.weight", "1.bias"}, False)
    assert all(p.requires_grad for p in model.parameters())


def test_backbone_freeze_unfreezes_after_its_epochs_and_says_so():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    lines: list[str] = []
    cb = BackboneFreeze({"1.weight", "1.bias"}, 2, lines.append)
    trainer = SimpleNamespace(model=model, epoch=0)
    grads = []
    for epoch in range(4):
        trainer.epoch = epoch
        cb.on_train_epoch_start(trainer)
        grads.append(model[0].weight.requires_grad)
    assert grads == [False, False, True, True] and model[1].weight.requires_grad
    assert lines == ["Epoch 3: backbone unfrozen"]  # freezing at the start is not news
    resumed = BackboneFreeze({"1.weight", "1.bias"}, 2, lines.append)
    trainer.epoch = 3  # a run resumed after the unfreeze: unfrozen at once
    resumed.on_train_epoch_start(trainer)
    assert model[0].weight.requires_grad and lines[-1] == "Epoch 4: backbone unfrozen"
    always = BackboneFreeze({"1.weight", "1.bias"}, 0, lines.append)
    trainer.epoch = 9
    always.on_train_epoch_start(trainer)
    assert not model[0].weight.requires_grad  # 0 epochs: frozen for the whole run


def test_frozen_means_frozen_batchnorm_statistics_included(tmp_path, image_folder):
    """Every tensor of a frozen backbone, BatchNorm's running statistics included, ends as it started (Keras's
    rule; it used to move all 60 of resnet18's BN buffers); fastai's train_bn keeps them training instead."""
    path, source = _fake_imagenet_file(tmp_path)
    _train(image_folder, tmp_path / "frozen", weights=str(path), freeze="backbone")
    trained = load_file(tmp_path / "frozen" / "model.safetensors")
    start = create_model("resnet18", num_classes=3, input_shape=(1, 32, 32)).state_dict()
    backbone = [k for k in trained if not k.startswith("fc.")]
    assert len([k for k in backbone if "running_" in k]) == 40  # resnet18's 20 BatchNorms: mean and var
    for k in backbone:
        want = source[k].sum(1, keepdim=True) if k == "conv1.weight" else source[k]
        if k.endswith("num_batches_tracked"):
            want = start[k]  # the file's counters are replaced by a fresh model's when loading adapts it
        assert torch.equal(trained[k], want.to(trained[k].dtype)), k
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])

    cfg = experiment_config(dataset=f"folder:{image_folder}", model="resnet18", epochs=1, batch_size=32,
                            weights=str(path), freeze="backbone",
                            overrides=[("data.image_size", 32), ("data.grayscale", True), ("model.train_bn", True)])
    assert train(cfg, out=tmp_path / "train_bn", progress=False, log=lambda s: None).failed is None
    with_bn = load_file(tmp_path / "train_bn" / "model.safetensors")
    assert not torch.equal(with_bn["layer1.0.bn1.running_mean"], source["layer1.0.bn1.running_mean"])
    assert not torch.equal(with_bn["layer1.0.bn1.weight"], source["layer1.0.bn1.weight"])
    assert torch.equal(with_bn["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
