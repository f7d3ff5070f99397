"""A small trained run shared by the tests of the public face (one per test session)."""

from __future__ import annotations

import pytest

import cnnlab

TINY = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
        {"type": "Flatten"}, {"type": "Dense", "units": "num_classes", "activation": "softmax"}]


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "nb"
    return cnnlab.train(dataset="fashion-mnist-sample", epochs=2, batch_size=256, out=out, progress=False,
                        overrides={"model.layers": TINY}, log=lambda s: None)
