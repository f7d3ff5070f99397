"""Prediction engines: uint8 images in, softmax probabilities out, the same from PyTorch and ONNX Runtime."""

from __future__ import annotations

import os

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


def test_the_torch_engine_keeps_the_memory_it_frees(tiny, monkeypatch):
    from cnnlab.serve import engines

    calls = []
    monkeypatch.setattr(engines, "keep_freed_memory", lambda: calls.append(1) or True)
    TorchEngine(tiny, NORM)
    assert calls == [1]  # glibc's thresholds, as training sets them (cnnlab.native.heap)


@pytest.mark.parametrize("batch", [None, 4])
def test_ort_engine_matches_torch_with_dynamic_and_fixed_batches(tiny, tmp_path, batch):
    path = tmp_path / "tiny.onnx"
    write_onnx(tiny, (1, 6, 6), path, batch=batch)
    engine = OrtEngine(ort_session(path, threads=1, spin=False), NORM, 1)
    assert engine.name == "onnx" and engine.fixed == batch
    x = _images(10)  # with a fixed batch of 4: 4 + 4 + 2 (zero-padded)
    got = engine(x)
    assert got.shape == (10, 4) and np.abs(got - TorchEngine(tiny, NORM)(x)).max() <= 1e-5


def test_ort_session_asks_for_the_cpu_provider_by_its_name(tiny, tmp_path, capfd):
    path = tmp_path / "tiny.onnx"
    write_onnx(tiny, (1, 6, 6), path)
    session = ort_session(path)
    out, err = capfd.readouterr()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "EP Error" not in out + err  # onnxruntime's banner for a provider name it does not know (then a retry)


def test_ort_session_of_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CnnlabError, match=r"nope.onnx not found; export the run to ONNX first \(cnnlab export RUN_DIR\)"):
        ort_session(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(CnnlabError, match="junk.onnx is not a usable ONNX model .*; delete it and export the run again") as err:
        ort_session(tmp_path / "junk.onnx")
    assert "\n" not in str(err.value)


def test_a_graph_that_fails_while_running_is_one_line_and_prints_nothing(tmp_path, capfd):
    import onnx
    from onnx import TensorProto, helper

    # a graph that loads but cannot run: it reshapes 4 values of the image into 3 (the tester's asked 160 GB)
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [3])
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "shape"], ["probs"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 2, 2])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bad.onnx")
    engine = OrtEngine(ort_session(tmp_path / "bad.onnx"), Normalizer((0.0,), (1.0,)), 1)
    capfd.readouterr()
    with pytest.raises(CnnlabError, match=rf"^{tmp_path}/bad.onnx failed in ONNX Runtime \(Non-zero status code "
                                          r"returned while running Reshape node.*\); delete it and export the run "
                                          r"again \(cnnlab export RUN_DIR\)$") as err:
        engine(np.zeros((1, 1, 2, 2), np.uint8))
    assert "onnxruntime_src" not in str(err.value)  # the C++ location it quotes is left out
    assert capfd.readouterr().err == ""  # ONNX Runtime's own coloured copy of the error is not printed


def test_ort_session_names_a_directory_or_fifo_in_place_of_the_model(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(CnnlabError, match="dir.onnx is a directory, not a file; delete it and export the run"):
        ort_session(tmp_path / "dir.onnx")
    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(CnnlabError, match="fifo.onnx is a FIFO, not a file; delete it and export the run"):
        ort_session(tmp_path / "fifo.onnx")


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


def test_median_latency_defaults_25_timings_within_a_quarter_second(monkeypatch):
    calls = []
    engine = calls.append
    monkeypatch.setattr("cnnlab.serve.engines.time.perf_counter", lambda: 0.0)  # a clock that never moves
    median_latency(engine, (1, 2, 2))
    assert len(calls) == 3 + 25  # reps: 25 timings at most
    clock = iter(i / 64 for i in range(10_000))  # 1/64 s a reading (exact in binary); stop = 16/64 = 0.25 s
    monkeypatch.setattr("cnnlab.serve.engines.time.perf_counter", lambda: next(clock))
    calls.clear()
    median_latency(engine, (1, 2, 2))
    # readings: 0 sets the stop (16); 3 timed calls read 1-6; then each call reads the stop check, start and
    # end, so the checks at 7, 10 and 13 pass and the one at 16 ends it
    assert len(calls) == 3 + 3 + 3


class _FakeSession:
    """An onnxruntime session stand-in: records the float32 batches it is given, returns them flattened."""

    def __init__(self, batch):
        from types import SimpleNamespace

        self.inputs, self._shape = [], [batch, 3, 1, 2]
        self.get_inputs = lambda: [SimpleNamespace(shape=self._shape)]

    def run(self, names, feed):
        assert names == ["probs"]
        self.inputs.append(feed["input"].copy())
        return [feed["input"].reshape(len(feed["input"]), -1)]


def test_ort_engine_normalises_each_channel_with_its_own_constants():
    session = _FakeSession("N")
    norm = Normalizer((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    engine = OrtEngine(session, norm, 3)
    x = np.array([[[[255, 0]], [[255, 0]], [[255, 0]]]], np.uint8)  # (1, 3, 1, 2)
    got = engine(x)  # (1 - .5)/.5, (0 - .5)/.5; (1 - .25)/.25, (0 - .25)/.25; 1, 0
    np.testing.assert_allclose(got, [[1.0, -1.0, 3.0, -1.0, 1.0, 0.0]], rtol=1e-6)
    assert engine.fixed is None and session.inputs[0].dtype == np.float32


def test_ort_session_options_and_the_first_line_of_a_load_error(tiny, tmp_path, monkeypatch):
    import onnxruntime as ort

    path = tmp_path / "tiny.onnx"
    write_onnx(tiny, (1, 6, 6), path)
    opts = ort_session(path, threads=2, spin=False).get_session_options()
    assert (opts.inter_op_num_threads, opts.intra_op_num_threads) == (1, 2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.log_severity_level == 4  # onnxruntime's levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
    spinning = ort_session(path).get_session_options()  # spin-waiting is onnxruntime's default: left alone
    with pytest.raises(Exception, match="does not have configuration"):
        spinning.get_session_config_entry("session.intra_op.allow_spinning")

    def fail(*args, **kwargs):
        raise RuntimeError("x" * 300 + "\nsecond line")

    monkeypatch.setattr(ort, "InferenceSession", fail)
    with pytest.raises(CnnlabError, match=rf"^{path} is not a usable ONNX model \(x{{199}}…\); delete it and "
                                          r"export the run again \(cnnlab export RUN_DIR\)$"):
        ort_session(path)


def test_median_latency_feeds_uint8_and_times_until_the_budget_is_spent(monkeypatch):
    from cnnlab.serve import engines

    ticks = iter(range(1000))
    monkeypatch.setattr(engines.time, "perf_counter", lambda: float(next(ticks)))
    dtypes = []
    # each timed call takes one tick (t0 = k, end = k + 1); budget 7 from tick 0: 3 calls, then the clock reads 7
    assert median_latency(lambda x: dtypes.append(x.dtype), (1, 2, 2), budget=7.0, reps=10) == 1.0
    assert dtypes == [np.uint8] * (3 + 3)
