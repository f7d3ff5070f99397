"""Tiny models and helpers for the feature-map / weights / summary / architecture view tests.

Fixture names end in ``_maps`` so they cannot clash with other view tests in this folder.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch import nn


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
