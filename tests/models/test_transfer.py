"""Transfer learning end to end: local 'ImageNet' weights → new head, frozen backbone, fine-tuning."""

import json

import torch
from safetensors.torch import load_file

from cnnlab.cli import main
from cnnlab.models import create_model


def _fake_imagenet_file(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, input_shape=(3, 224, 224))
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def _args(folder):
    return ["train", "--dataset", f"folder:{folder}", "--model", "resnet18", "--epochs", "2", "--batch-size", "32",
            "--no-progress", "--set", "data.image_size=32", "--set", "data.grayscale=true", "--set", "train.lr=0.01"]


def test_frozen_backbone_trains_only_the_new_head(tmp_path, capsys, image_folder):
    path, source = _fake_imagenet_file(tmp_path)
    out = tmp_path / "run"
    assert main([*_args(image_folder), "--weights", str(path), "--freeze", "backbone", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "adapted conv1.weight" in log and "re-initialised fc" in log
    trained = load_file(out / "model.safetensors")
    assert trained["fc.weight"].shape == (3, 512)
    # grey input: the RGB kernels summed; untouched by training since the backbone is frozen
    assert torch.allclose(trained["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(trained["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])


def test_fine_tune_unfreezes_after_one_epoch(tmp_path, capsys, image_folder):
    path, source = _fake_imagenet_file(tmp_path)
    out = tmp_path / "run"
    assert main([*_args(image_folder), "--weights", str(path), "--fine-tune", "--out", str(out)]) == 0
    assert "Epoch 2: backbone unfrozen" in capsys.readouterr().out
    trained = load_file(out / "model.safetensors")
    assert not torch.equal(trained["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    meta = json.loads((out / "run.json").read_text())
    assert meta["normalizer"]["mean"] == [0.0]  # weights from a file, not --pretrained: plain x/255 unless asked


def test_pretrained_needs_a_registered_arch(capsys):
    assert main(["train", "--dataset", "fashion-mnist-sample", "--model", "cnn_64x2", "--pretrained"]) == 2
    assert "no official ImageNet weights for 'cnn_64x2'" in capsys.readouterr().err


def test_pretrained_offline_is_a_clear_error(capsys, monkeypatch):
    from dataclasses import replace

    from cnnlab.models import MODELS

    entry = MODELS.get("resnet18")
    weights = replace(entry.meta.weights, url="http://127.0.0.1:9/resnet18-f37072fd.pth")
    monkeypatch.setitem(MODELS._items, "resnet18", replace(entry, meta=replace(entry.meta, weights=weights)))
    assert main(["train", "--dataset", "fashion-mnist-sample", "--model", "resnet18", "--pretrained", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--weights" in err and err.count("\n") == 1
