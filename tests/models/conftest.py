"""Helpers for the classic families' tests: torchvision's layouts, building on the meta device, one thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.models import create_model

TORCHVISION_KEYS = json.loads(Path(__file__).with_name("torchvision_keys.json").read_text())


@pytest.fixture(scope="module")
def one_thread():
    # Small convs on busy shared cores: one intra-op thread avoids OpenMP spin-waits (30x slower here).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def torchvision_keys() -> dict:
    """[[key, shape], ...] of torchvision's state dict per architecture (see the file's ``_source``)."""
    return TORCHVISION_KEYS


def _build_meta(arch: str, **kw) -> nn.Module:
    size = 299 if arch == "inception_v3" else 224
    kw.setdefault("num_classes", 1000)
    kw.setdefault("input_shape", (3, size, size))
    with torch.device("meta"):
        return create_model(arch, **kw)


@pytest.fixture
def build_meta():
    """``build_meta(arch, **kw)``: ``arch`` built on the meta device (shapes only, no memory, no init cost),
    1000 classes at torchvision's input size unless given."""
    return _build_meta


@pytest.fixture
def n_params():
    """``n_params(model)``: the number of parameters."""
    return lambda model: sum(p.numel() for p in model.parameters())
