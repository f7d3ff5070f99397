"""cnnlab: train, evaluate, compare and see inside convolutional image classifiers.

The public Python face (see :mod:`cnnlab.app.api`)::

    import cnnlab
    run = cnnlab.train("fashion_mnist_cnn", epochs=3, dataset="fashion-mnist-sample")
    run.show("feature-maps", images=[0, 7, 26])

Names are imported on first use, so ``import cnnlab`` (and the ``cnnlab`` command's start-up) does not
pay for PyTorch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cnnlab._version import __version__

_PUBLIC = {
    "train": "cnnlab.app.api",
    "load_run": "cnnlab.app.api",
    "create_model": "cnnlab.app.api",
    "summary": "cnnlab.app.api",
    "list_models": "cnnlab.app.api",
    "lr_find": "cnnlab.app.api",
    "Run": "cnnlab.app.run",
    "Config": "cnnlab.config",
    "load_config": "cnnlab.config",
    "CnnlabError": "cnnlab.errors",
}

__all__ = ["CnnlabError", "Config", "Run", "__version__", "create_model", "list_models", "load_config", "load_run",
           "lr_find", "summary", "train"]

if TYPE_CHECKING:
    from cnnlab.app.api import create_model, list_models, load_run, lr_find, summary, train
    from cnnlab.app.run import Run
    from cnnlab.config import Config, load_config
    from cnnlab.errors import CnnlabError


def __getattr__(name: str) -> Any:
    # PEP 562: the public names load lazily (start-up time); each resolves once, then is a plain attribute
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
