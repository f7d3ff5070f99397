"""One small trained CNN for the serving tests (export, quantisation, prediction), trained once per session."""

from __future__ import annotations

import shutil

import pytest

from cnnlab.config import load_config
from cnnlab.runs import experiment

TINY_CNN = (
    {"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"},  # fan-in 9: a native-kernel first layer in training
    {"type": "MaxPooling2D", "pool_size": 2},
    {"type": "Flatten"},
    {"type": "Dense", "units": "num_classes", "activation": "softmax"},
)


@pytest.fixture(scope="session")
def tiny_cnn_layers():
    """The Conv8-Pool-Dense layer list (a fresh copy for each caller)."""
    return [dict(layer) for layer in TINY_CNN]


@pytest.fixture(scope="session")
def trained_tiny_cnn(tmp_path_factory, tiny_cnn_layers):
    """The Conv8-Pool-Dense CNN trained one epoch on the bundled Fashion-MNIST sample, standardised input.
    Shared: copy it (:func:`copy_run`) before writing into it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        cfg = load_config(None, base={"train": {"epochs": 1, "batch_size": 256}, "model": {"layers": tiny_cnn_layers},
                                      "data": {"dataset": "fashion-mnist-sample", "normalize": "standard"}})
        path = tmp_path_factory.mktemp("runs") / "cnn"
        assert experiment.train(cfg, out=path, progress=False, log=lambda s: None).failed is None
        return path


@pytest.fixture(scope="session")
def copy_run():
    """``copy_run(run, folder)``: a copy of a shared run to write into."""
    return lambda run, folder: shutil.copytree(run, folder / run.name)
