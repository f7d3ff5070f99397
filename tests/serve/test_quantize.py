"""int8 export: QDQ graph with per-channel weights, both accuracies on the whole test set, refusal past
`max_drop` with nothing written, and the onnx engine preferring a current int8 file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cnnlab.data.datasets import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.runs.loaded import load_run
from cnnlab.serve.onnx import export_onnx, read_metadata
from cnnlab.serve.predict import Predictor
from cnnlab.serve.quantize import INT8_META, QuantResult, calibration_batch, int8_path


@pytest.fixture
def run(trained_tiny_cnn, copy_run, tmp_path):
    return copy_run(trained_tiny_cnn, tmp_path)


def test_int8_path():
    assert int8_path("/r/model.onnx").as_posix() == "/r/model.int8.onnx"
    assert int8_path("out/fixed.onnx").as_posix() == "out/fixed.int8.onnx"


def test_int8_export_writes_a_qdq_graph_and_both_accuracies(run):
    lines: list[str] = []
    result = export_onnx(run, quantize="int8", log=lines.append)
    q = result.int8
    assert q.path == run / "model.int8.onnx" and q.path.is_file() and (run / "model.onnx").is_file()
    assert (q.images, q.calibration, q.max_drop) == (1000, 300, 0.5)
    assert lines == [result.parity_line, q.line] and q.line.startswith(
        f"int8: test accuracy fp32 {q.fp32_acc:.2%} | int8 {q.int8_acc:.2%} over 1,000 test images (drop ")
    proto = onnx.load(str(q.path))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and ops[-1] == "Softmax"
    conv_w = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    assert list(conv_w.dims) == [8, 1, 3, 3]  # the conv weights themselves are int8 ...
    scales = [i for i in proto.graph.initializer if list(i.dims) == [8] and i.data_type == onnx.TensorProto.FLOAT]
    assert scales  # ... with one scale per output channel
    assert read_metadata(q.path).classes == read_metadata(run / "model.onnx").classes
    assert {p.key: p.value for p in proto.metadata_props}[INT8_META] == "int8"
    # the reported accuracies are the engines' own: recompute fp32's from PyTorch (parity holds to 1e-4)
    _, test = load_dataset("fashion-mnist-sample")
    lr = load_run(run)
    with torch.inference_mode():
        torch_acc = (lr.model(lr.normalizer(test.images)).argmax(1) == test.labels).float().mean().item()
    assert abs(torch_acc - q.fp32_acc) <= 2 / 1000  # at most 2 of 1,000 near-ties may flip within 1e-4
    assert q.int8_acc > 0.5 and q.drop <= 0.5


def test_a_refused_int8_export_writes_nothing(run):
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CnnlabError) as exc:
        export_onnx(run, quantize="int8", max_drop=-100.0, log=lambda s: None)  # int8 would have to gain 100 points
    msg = str(exc.value)
    assert "\n" not in msg and "loses more than `max_drop`; nothing was written" in msg
    assert msg.startswith("int8: test accuracy fp32 ")
    assert sorted(p.name for p in run.iterdir()) == before  # neither file, no scratch files


def test_quantize_mistakes(run):
    with pytest.raises(CnnlabError, match="unknown quantize 'int4'"):
        export_onnx(run, quantize="int4")
    with pytest.raises(CnnlabError, match="needs a dynamic batch"):
        export_onnx(run, quantize="int8", batch=8, log=lambda s: None)
    assert not (run / "model.onnx").exists()


def test_calibration_batch_is_normalised_training_images(run):
    train, _ = load_dataset("fashion-mnist-sample")
    lr = load_run(run)
    x = calibration_batch(train, lr.normalizer, 50)
    assert x.shape == (50, 1, 28, 28) and x.dtype == np.float32
    assert np.array_equal(x, calibration_batch(train, lr.normalizer, 50))  # a fixed draw
    assert abs(float(x.mean())) < 0.3  # standardised: mean ~0 over the draw (50 images vary by ~0.1)


def test_the_onnx_engine_uses_a_current_int8_file_and_says_so(run):
    export_onnx(run, quantize="int8", log=lambda s: None)
    notes: list[str] = []
    pred = Predictor.from_run(run, "onnx", log=notes.append)
    assert notes == [f"note: using the int8 model {run / 'model.int8.onnx'}"]
    _, test = load_dataset("fashion-mnist-sample")
    probs = pred.predict(test.images[:64].numpy())
    assert probs.shape == (64, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)  # softmax stays float
    # a stale int8 file (other weights) is ignored with a note, and the fp32 file serves
    proto = onnx.load(str(run / "model.int8.onnx"))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "cnnlab.weights_sha256": "0" * 64})
    onnx.save(proto, str(run / "model.int8.onnx"))
    notes.clear()
    Predictor.from_run(run, "onnx", log=notes.append)
    assert len(notes) == 1 and notes[0].startswith(f"note: ignoring {run / 'model.int8.onnx'}: exported from other")


def test_quant_result_drop_is_in_points():
    r = QuantResult(None, 0.9, 0.897, 1000, 300, 0.5)
    assert r.drop == pytest.approx(0.3)
