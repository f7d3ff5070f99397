"""Where ONNX Runtime spends a single image: graph variants, per-node times and the runtime's own floor.

The issue's single-image target is p50 ≤ 50 µs for the tutorial CNN. This measures, on a trained run exported
with ``cnnlab export RUN`` (its ``model.onnx``), in one process with rounds interleaved:

* the p50 of one normalised 28x28 image through ``InferenceSession.run`` (one intra-op thread, as the
  prediction engine runs) for the fp32 graph and four int8 graphs made with ONNX Runtime's static quantisation
  under cnnlab's settings (per-channel int8 weights, uint8 activations, MinMax on 300 training images): QDQ
  (what ``cnnlab export --quantize int8`` writes), QOperator, and both with the first Conv2D kept fp32;
* the test accuracy of each graph (10,000 images);
* ONNX Runtime's per-node kernel times at batch 1 (``SessionOptions.enable_profiling``; the profiler's own
  cost inflates them, so read them as shares);
* the floor: the p50 of a one-node (Relu) graph on the same input.

    .venv/bin/python benchmarks/onnx_single.py RUN_DIR [--rounds 5] [--calls 1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def p50_us(session, feed: dict, calls: int) -> float:
    """Median µs of ``calls`` runs after 100 warm-up runs."""
    out = [session.get_outputs()[0].name]
    for _ in range(100):
        session.run(out, feed)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(out, feed)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def session(model, *, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, profile
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def variants(fp32: Path, calibration: np.ndarray, folder: Path) -> dict[str, str]:
    """fp32 plus the int8 graphs, as file paths."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i:i + 32] for i in range(0, len(calibration), 32))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    nodes = onnx.load(str(fp32)).graph.node
    softmax = [n.name for n in nodes if n.op_type == "Softmax"]
    first_conv = [next(n.name for n in nodes if n.op_type == "Conv")]
    pre = folder / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out = {"fp32": str(fp32)}
    for name, fmt, exclude in (("int8 QDQ (cnnlab's export)", QuantFormat.QDQ, softmax),
                               ("int8 QOperator", QuantFormat.QOperator, softmax),
                               ("int8 QDQ, first conv fp32", QuantFormat.QDQ, softmax + first_conv),
                               ("int8 QOperator, first conv fp32", QuantFormat.QOperator, softmax + first_conv)):
        path = folder / f"{len(out)}.onnx"
        quantize_static(str(pre), str(path), Reader(), quant_format=fmt, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                        extra_options={"CalibTensorRangeSymmetric": False})
        out[name] = str(path)
    return out


def node_times(path: str, x: np.ndarray, calls: int, prefix: str) -> list[tuple[str, str, float]]:
    """(node, op, median µs) of each node at batch 1, slowest first; the profile is written under ``prefix``."""
    s = session(path, profile=prefix)
    p50_us(s, {"input": x}, calls)
    events = json.loads(Path(s.end_profiling()).read_text())
    per = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[(e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", ""))].append(e["dur"])
    return sorted(((n, op, statistics.median(v)) for (n, op), v in per.items()), key=lambda t: -t[2])


def floor_us(x: np.ndarray, calls: int) -> float:
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape)) for n in ("input", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "floor", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return p50_us(session(model.SerializeToString()), {"input": x}, calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()

    from cnnlab.data.prepare import load_test_data, load_train_data
    from cnnlab.runs.loaded import load_run
    from cnnlab.serve.quantize import calibration_batch

    lr = load_run(args.run)
    train, test = load_train_data(lr.cfg.data), load_test_data(lr.cfg.data)
    calibration = calibration_batch(train, lr.normalizer)
    x = lr.normalizer(test.images).float().numpy()
    labels = test.labels.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        files = variants(Path(args.run) / "model.onnx", calibration, Path(tmp))
        sessions = {name: session(path) for name, path in files.items()}
        for name, s in sessions.items():
            pred = np.concatenate([s.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, len(x), 1000)])
            print(f"{name:<34} test accuracy {np.mean(pred == labels):.2%}")
        rounds = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                rounds[name].append(p50_us(s, {"input": x[:1]}, args.calls))
        print(f"\n{'single image, p50 µs':<34} median  rounds")
        for name, v in rounds.items():
            print(f"{name:<34} {statistics.median(v):6.0f}  {' '.join(f'{t:.0f}' for t in v)}")
        print(f"{'one Relu node (the floor)':<34} {floor_us(x[:1], args.calls):6.0f}")
        qdq = files["int8 QDQ (cnnlab's export)"]
        print("\nper node at batch 1, int8 QDQ (profiled: read as shares)")
        times = node_times(qdq, x[:1], args.calls, str(Path(tmp) / "profile"))
        total = sum(t for *_, t in times)
        for name, op, t in times:
            print(f"  {op:<18} {t:6.1f} µs {t / total:5.0%}  {name}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
