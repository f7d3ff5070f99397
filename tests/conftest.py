"""Shared fixtures: an isolated cache, the real-data location, tiny generated datasets, a local file server,
small models for the inspect / plots / models tests, and trained runs shared by the library and CLI tests."""

from __future__ import annotations

import http.server
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn

from cnnlab.data.tensors import ImageData, Normalizer

# MLflow would otherwise send usage telemetry over the network; the tests never leave 127.0.0.1.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if "CNNLAB_DATA" not in os.environ and SHARED.is_dir():
    os.environ["CNNLAB_DATA"] = str(SHARED)


# Session- and module-scoped fixtures (trained runs) run before the per-test fixtures below: give them a cache
# of their own too, so that no test ever reads or writes ~/.cache/cnnlab.
_SESSION_CACHE = tempfile.TemporaryDirectory(prefix="cnnlab-test-cache-")
os.environ["CNNLAB_CACHE"] = _SESSION_CACHE.name


@pytest.fixture(autouse=True)
def _isolated_cache_and_folder(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache and runs in an empty folder, so nothing it writes (a default
    ``runs/`` included) lands in ~/.cache/cnnlab or in the repository."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def skip_unless_ci(reason: str) -> None:
    """Skips a test whose prerequisite is missing here, but fails it under CI (CI=true), where .ci/run must have
    provided everything: a missing browser or missing data must never turn into a silent green."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must provide it)")
    pytest.skip(reason)


@pytest.fixture(name="skip_unless_ci")
def _skip_unless_ci_fixture():
    """:func:`skip_unless_ci` for test modules (conftest helpers are reached through fixtures)."""
    return skip_unless_ci


@pytest.fixture
def real_data() -> Path:
    """The folder with the official datasets (MNIST, Fashion-MNIST and CIFAR-10); skips the test when this machine
    has none, and fails under CI."""
    root = os.environ.get("CNNLAB_DATA")
    missing = [d for d in ("mnist", "fashion-mnist", "cifar-10") if not root or not (Path(root) / d).is_dir()]
    if missing:
        skip_unless_ci(f"real datasets not available: {', '.join(missing)} (set CNNLAB_DATA)")
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
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before the per-test cache is set
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        train, _ = load_dataset("fashion-mnist-sample")
    for label, name in ((0, "tshirt"), (1, "trouser"), (7, "sneaker")):
        (root / name).mkdir(parents=True)
        idx = torch.nonzero(train.labels == label).flatten()[:40]
        for k, i in enumerate(idx.tolist()):
            Image.fromarray(train.images[i, 0].numpy()).convert("RGB").save(root / name / f"{name}.{k}.png")
    return root


# ------------------------------------------------------------------------------- a local file server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):  # noqa: N802 - http.server API
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # A truncated response: promise the full length, send half, close.
        self.wfile.write(body[: len(body) // 2] if self.path in self.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """Serves generated bytes on 127.0.0.1; yields (base URL, handler class: set ``files`` / ``truncate``)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    # a short poll interval: shutdown() waits for the serving loop to look, 0.5 s by default
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    _Handler.files, _Handler.truncate = {}, set()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------- tiny models for the summary / inspect / plots tests
# Fixture names end in ``_maps`` so they cannot clash with the fixtures of other tests.


class KConv2D(nn.Conv2d):
    """Keras-like Conv2D: the ReLU runs inside the layer, so its output is post-activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class KDense(nn.Linear):
    """Keras-like Dense with ReLU inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class Block(nn.Module):
    """ResNet-style basic block; ``relu`` is shared by two calls, as in torchvision."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.bn1(self.conv1(x)))) + x)


class Nested(nn.Module):
    """stem → layer1 (2 blocks) → pool → fc; ``fc`` is defined before ``stem`` to test execution order,
    and ``aux`` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.stem = nn.Conv2d(3, 4, 3)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.aux = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer1(self.stem(x))).flatten(1))


def keras_cnn() -> nn.Sequential:
    """(1, 14, 14) → conv2d 4@12×12 → pool 4@6×6 → conv2d_1 6@4×4 → pool 6@2×2 → 24 → 8 → 3."""
    return nn.Sequential(OrderedDict(
        conv2d=KConv2D(1, 4, 3), max_pooling2d=nn.MaxPool2d(2), conv2d_1=KConv2D(4, 6, 3),
        max_pooling2d_1=nn.MaxPool2d(2), flatten=nn.Flatten(), dense=KDense(24, 8), dense_1=nn.Linear(8, 3)))


@pytest.fixture
def keras_cnn_maps() -> nn.Sequential:
    torch.manual_seed(0)
    return keras_cnn()


@pytest.fixture
def nested_cnn_maps() -> Nested:
    torch.manual_seed(0)
    return Nested()


@pytest.fixture
def dense_net_maps() -> nn.Sequential:
    """Flatten → 16 → 8 → 5 → 3 on (1, 4, 4) images, with a ReLU and a Dropout that templates ignore."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), dense=nn.Linear(16, 8), relu=nn.ReLU(), dropout=nn.Dropout(0.5),
        dense_1=nn.Linear(8, 5), dense_2=nn.Linear(5, 3)))


@pytest.fixture
def images_maps() -> torch.Tensor:
    """Three uint8 (1, 14, 14) images with different content."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 1, 14, 14), generator=g, dtype=torch.uint8)


@pytest.fixture
def png_check_maps():
    """Asserts a saved PNG exists and is not one flat colour; returns its (H, W, C) pixels."""

    def check(path: Path) -> np.ndarray:
        assert path.is_file() and path.suffix == ".png"
        pixels = imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50
        assert float(pixels[..., :3].std()) > 0.02  # something drawn, not a blank canvas
        return pixels

    return check


# ------------------------------------------------ a small CNN that learned a planted patch (attribution)

PATCH_SIZE = 16
PATCH = (slice(3, 7), slice(9, 13))  # rows, cols of the 4×4 bright patch that defines class 1


class PatchBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class PatchNet(nn.Module):
    """Conv + BN + pool, a nested conv block, global average pool, dropout, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = PatchBlock()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.block(self.features(x))).flatten(1)))


def make_patch_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 160, (n, 1, PATCH_SIZE, PATCH_SIZE), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 1, :, PATCH[0], PATCH[1]] = 255
    return images, labels


@pytest.fixture(scope="session")
def patch_net() -> tuple[PatchNet, torch.Tensor, torch.Tensor]:
    """(model, test images, test labels): a PatchNet trained until it tells the patch images apart."""
    norm = Normalizer()
    torch.manual_seed(0)
    model = PatchNet()
    images, labels = make_patch_data(512, seed=1)
    x = norm(images)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(120):
        idx = torch.arange(step * 64, step * 64 + 64) % 512
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    test_images, test_labels = make_patch_data(64, seed=2)
    with torch.no_grad():
        acc = (model.eval()(norm(test_images)).argmax(1) == test_labels).float().mean().item()
    assert acc > 0.95, f"test model did not learn the patch (accuracy {acc:.2f})"
    return model, test_images, test_labels


# ------------------------------------------------------------- a Keras-like CNN for maximisation tests


class MaxConv2D(nn.Conv2d):
    """Keras-style conv: the activation is part of the layer, its output is post-ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class MaxBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class KerasNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv2d = MaxConv2D(1, 8, 3, padding=1)
        self.batch_normalization = nn.BatchNorm2d(8)
        self.conv2d_1 = MaxConv2D(8, 8, 3, padding=1)
        self.max_pooling2d = nn.MaxPool2d(2)
        self.block = MaxBlock()
        self.dropout = nn.Dropout(0.3)
        self.dense = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pooling2d(self.conv2d_1(self.batch_normalization(self.conv2d(x))))
        return self.dense(self.dropout(self.block(x).flatten(1)))


@pytest.fixture
def keras_net() -> KerasNet:
    """A KerasNet (16×16 grey input, 3 classes) in eval mode, seeded."""
    torch.manual_seed(0)
    return KerasNet().eval()


# ------------------------------------------------------------------------- trained runs, trained once
# Session-scoped: the library tests and the CLI tests share them. Tests that change a run work on a copy.

SMALL_CNN = [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
             {"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
             {"type": "Flatten"}, {"type": "Dense", "units": "num_classes", "activation": "softmax"}]


def train_run(tmp_path_factory, out: Path, **options) -> Path:
    """Trains ``runs.options.experiment_config(**options)`` into ``out`` quietly; returns ``out``.

    A fixture wider than one test is set up before the per-test cache exists, so this one gets its own.
    """
    from cnnlab.runs.experiment import train
    from cnnlab.runs.options import experiment_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        result = train(experiment_config(**options), out=out, progress=False, log=lambda s: None)
    assert result.failed is None
    return out


@pytest.fixture(scope="session")
def dnn_run(tmp_path_factory) -> Path:
    """dnn_128 trained 2 epochs (batch 256) on the bundled Fashion-MNIST sample."""
    return train_run(tmp_path_factory, tmp_path_factory.mktemp("runs") / "quick", dataset="fashion-mnist-sample",
                     model="dnn_128", epochs=2, batch_size=256)


@pytest.fixture(scope="session")
def small_cnn_run(tmp_path_factory) -> Path:
    """Two Conv8-Pool blocks trained 1 epoch (batch 128) on the bundled Fashion-MNIST sample."""
    return train_run(tmp_path_factory, tmp_path_factory.mktemp("cnn") / "run", dataset="fashion-mnist-sample",
                     epochs=1, batch_size=128, overrides=[("model.layers", SMALL_CNN)])
