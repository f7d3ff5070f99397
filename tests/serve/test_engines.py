"""Prediction engines: uint8 images in, softmax probabilities out, the same from PyTorch and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.serve.engines import ENGINES, OrtEngine, TorchEngine, median_latency, ort_session
from cnnlab.serve.onnx import write_onnx

NORM = Normalizer((0.3,), (0.2,))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 6, 6), dtype=np.uint8)


def test_torch_engine_is_the_softmax_of_the_normalised_input(tiny):
    engine = TorchEngine(tiny.train(), NORM)
    assert engine.name == "torch" and not tiny.training  # always eval mode
    x = _images(5)
    with torch.no_grad():
        want = tiny(NORM(torch.from_numpy(x))).softmax(1).numpy()
    got = engine(x)
    assert got.dtype == np.float32 and got.shape == (5, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


@pytest.mark.parametrize("batch", [None, 4])
def test_ort_engine_matches_torch_with_dynamic_and_fixed_batches(tiny, tmp_path, batch):
    path = tmp_path / "tiny.onnx"
    write_onnx(tiny, (1, 6, 6), path, batch=batch)
    engine = OrtEngine(ort_session(path, threads=1, spin=False), NORM, 1)
    assert engine.name == "onnx" and engine.fixed == batch
    x = _images(10)  # with a fixed batch of 4: 4 + 4 + 2 (zero-padded)
    got = engine(x)
    assert got.shape == (10, 4) and np.abs(got - TorchEngine(tiny, NORM)(x)).max() <= 1e-5


def test_ort_session_of_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CnnlabError, match=r"nope.onnx not found; export the run to ONNX first \(cnnlab export RUN_DIR\)"):
        ort_session(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(CnnlabError, match="junk.onnx is not a usable ONNX model .*; delete it and run") as err:
        ort_session(tmp_path / "junk.onnx")
    assert "\n" not in str(err.value)


def test_median_latency_times_single_images():
    calls: list[tuple] = []

    def engine(x):
        calls.append(x.shape)
        return x

    seconds = median_latency(engine, (1, 6, 6), budget=0.0, reps=5)
    assert seconds >= 0 and len(calls) == 3 + 3  # three warm-up calls, then at least three timed ones
    assert set(calls) == {(1, 1, 6, 6)}
    calls.clear()
    median_latency(engine, (3, 2, 2), budget=10.0, reps=7)
    assert len(calls) == 3 + 7
    assert ENGINES == ("auto", "torch", "onnx")
