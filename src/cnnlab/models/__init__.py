"""Model registry: small keyword-only builders registered by name (timm / torchvision style).

Every builder has the signature ``builder(*, num_classes: int, input_shape: tuple[int, int, int], **kw)``
with ``input_shape`` as (C, H, W), and returns an ``nn.Module`` mapping a float (N, C, H, W) batch to
(N, num_classes) logits. The softmax of the tutorials' last layer lives in the loss and in ``predict``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from cnnlab.registry import Registry

ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")

# Modules that register model families on import (one family per file).
_FAMILIES = ("seeds", "vgg", "resnet", "googlenet", "inception", "mobilenet", "alexnet")
_loaded = False


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Decorator registering a builder under its function name."""
    return MODELS.register()(fn)


def load_families() -> None:
    """Imports every model family module so the registry is complete (idempotent)."""
    global _loaded
    if _loaded:
        return
    for mod in _FAMILIES:
        try:
            importlib.import_module(f"cnnlab.models.{mod}")
        except ModuleNotFoundError as exc:  # a family not written yet must not break the others
            if exc.name != f"cnnlab.models.{mod}":
                raise
    _loaded = True


def create_model(name: str, *, num_classes: int, input_shape: tuple[int, int, int], **kwargs) -> nn.Module:
    """Builds the registered model ``name``; unknown names raise a one-line error listing valid ones."""
    load_families()
    return MODELS.get(name)(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def model_names() -> list[str]:
    load_families()
    return MODELS.names()


def describe(name: str) -> str:
    """First line of the builder's docstring."""
    load_families()
    doc = MODELS.get(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
