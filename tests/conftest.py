"""Shared fixtures: an isolated cache, the real-data location, tiny generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cnnlab.data.tensors import ImageData

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if "CNNLAB_DATA" not in os.environ and SHARED.is_dir():
    os.environ["CNNLAB_DATA"] = str(SHARED)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache, so nothing reads or writes ~/.cache/cnnlab."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def real_data() -> Path:
    """The folder with the official datasets; skips the test when this machine has none."""
    root = os.environ.get("CNNLAB_DATA")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        pytest.skip("real datasets not available (set CNNLAB_DATA)")
    return Path(root)


def make_images(n: int = 240, size: int = 12, channels: int = 1, classes: int = 3, seed: int = 0) -> ImageData:
    """A learnable toy set: class k has a bright bar in row band k (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randint(0, 60, (n, channels, size, size), generator=g).float()
    band = size // classes
    for k in range(classes):
        x[labels == k, :, k * band:(k + 1) * band, :] += 150
    names = tuple(f"class{k}" for k in range(classes))
    return ImageData(x.clamp(0, 255).to(torch.uint8), labels.long(), names, "toy")


@pytest.fixture
def toy() -> ImageData:
    return make_images()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A small class-subfolder dataset of real images: 3 Fashion-MNIST classes x 40 PNGs (RGB)."""
    from PIL import Image

    from cnnlab.data.datasets import load_dataset

    root = tmp_path_factory.mktemp("folder") / "clothes"
    train, _ = load_dataset("fashion-mnist-sample")
    for label, name in ((0, "tshirt"), (1, "trouser"), (7, "sneaker")):
        (root / name).mkdir(parents=True)
        idx = torch.nonzero(train.labels == label).flatten()[:40]
        for k, i in enumerate(idx.tolist()):
            Image.fromarray(train.images[i, 0].numpy()).convert("RGB").save(root / name / f"{name}.{k}.png")
    return root
