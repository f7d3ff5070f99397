"""Inference speed of a CNN on CPU: single-image latency and batched throughput, PyTorch vs onnxruntime.

Trains nothing. Builds the first tutorial's CNN ``cnn_64x2`` (Fashion-MNIST, 28×28×1, 10 classes) with
random weights (speed does not depend on the values), or loads a run's model with ``--run``, exports it to
a temporary ONNX file, and measures in one process:

* single-image latency, p50/p90 over ``--single`` calls, uint8 pixels in → probabilities out, through
  the same engine objects ``cnnlab.predict.Predictor`` uses (normalise + forward + softmax);
* batched throughput (img/s, uint8 in → probabilities out) at each ``--batches`` size for PyTorch fp32,
  fp32 channels-last, bf16 autocast, bf16 channels-last, and onnxruntime;
* with ``--run``: also onnxruntime on the run's int8 graph (``cnnlab export --quantize int8``: QDQ,
  per-channel weights, calibrated on 300 training images) and the test accuracy of fp32 and int8.

Each measurement is repeated ``--repeats`` times, interleaved, and the median is reported: other processes
on a shared machine slow single rounds down, so spread shows up as a gap between rounds (``--json`` has
every round). Also prints how far bf16's probabilities move from fp32's (why ``predict`` stays fp32).

    .venv/bin/python benchmarks/inference_speed.py [--run RUN_DIR] [--batches 64 256 1024 4096 8192]
        [--repeats 3] [--single 500] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def build(args: argparse.Namespace):
    """(model, input shape, mean, std, label) from ``--run`` or a random-weight ``--model``."""
    if args.run:
        from cnnlab.runs.loaded import load_run

        lr = load_run(args.run)
        return lr.model, lr.input_shape, lr.normalizer.mean, lr.normalizer.std, f"run {args.run}"
    from cnnlab.models import create_model

    torch.manual_seed(0)
    shape = tuple(args.input_shape)
    model = create_model(args.model, num_classes=10, input_shape=shape).eval()
    return model, shape, (0.0,), (1.0,), f"{args.model} (random weights)"


def percentiles(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(p50, p90) seconds of ``n`` calls of ``fn`` after a warm-up."""
    for _ in range(max(10, n // 20)):
        fn()
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def throughput(fn: Callable[[], object], batch: int, min_time: float) -> float:
    """img/s: ``batch`` over the median call time (one warm-up call, then calls for ``min_time`` seconds)."""
    fn()
    times: list[float] = []
    stop = time.perf_counter() + min_time
    while not times or time.perf_counter() < stop:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def torch_variant(model: torch.nn.Module, scale: torch.Tensor, shift: torch.Tensor, *, bf16: bool,
                  channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch → probabilities with PyTorch, optionally under bf16 autocast and/or channels-last."""
    if channels_last:
        import copy

        model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(x8: torch.Tensor) -> torch.Tensor:
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            x = x8.float().mul_(scale).sub_(shift)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return model(x).float().softmax(1)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="measure this run's model instead of a random-weight --model")
    ap.add_argument("--model", default="cnn_64x2", help="registered model (default cnn_64x2)")
    ap.add_argument("--input-shape", type=int, nargs=3, default=(1, 28, 28), metavar=("C", "H", "W"))
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096, 8192])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every measurement (median reported)")
    ap.add_argument("--single", type=int, default=500, help="single-image calls per round")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of calls per batched measurement")
    ap.add_argument("--threads", type=int, help="PyTorch and onnxruntime threads (default: one per core)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args()

    from cnnlab.data.tensors import Normalizer
    from cnnlab.serve.engines import OrtEngine, TorchEngine, ort_session
    from cnnlab.serve.onnx import write_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    model, shape, mean, std, label = build(args)
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    onnx_path = tmp / "model.onnx"
    quant = None
    if args.run:  # the run's own export path: fp32 + int8 files, with both test accuracies
        from cnnlab.serve.onnx import export_onnx

        quant = export_onnx(args.run, out=onnx_path, quantize="int8", max_drop=100.0, log=lambda s: None).int8
    else:
        write_onnx(model, shape, onnx_path)
    session = ort_session(onnx_path, threads=args.threads)
    norm = Normalizer(tuple(mean), tuple(std))
    engines = {"torch eager fp32": TorchEngine(model, norm), "onnxruntime": OrtEngine(session, norm, shape[0])}
    if quant:
        engines["onnxruntime int8"] = OrtEngine(ort_session(quant.path, threads=args.threads), norm, shape[0])
    scale, shift = (torch.from_numpy(a) for a in norm.numpy_scale_shift(shape[0]))
    variants = {
        "torch fp32": torch_variant(model, scale, shift, bf16=False, channels_last=False),
        "torch fp32 channels-last": torch_variant(model, scale, shift, bf16=False, channels_last=True),
        "torch bf16 autocast": torch_variant(model, scale, shift, bf16=True, channels_last=False),
        "torch bf16 channels-last": torch_variant(model, scale, shift, bf16=True, channels_last=True),
    }
    ort_engine = engines["onnxruntime"]
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, *shape), dtype=np.uint8)

    single: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    batched: dict[str, dict[int, list[float]]] = {name: {b: [] for b in args.batches}
                                                  for name in [*variants, *list(engines)[1:]]}
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for name, eng in engines.items():
            single[name].append(percentiles(lambda eng=eng: eng(one), args.single))
        for b in args.batches:
            x8 = rng.integers(0, 256, (b, *shape), dtype=np.uint8)
            xt = torch.from_numpy(x8)
            for name, fn in variants.items():
                batched[name][b].append(throughput(lambda fn=fn, xt=xt: fn(xt), b, args.min_time))
            for name in list(engines)[1:]:  # onnxruntime fp32 (and int8)
                eng = engines[name]
                batched[name][b].append(throughput(lambda x8=x8, eng=eng: eng(x8), b, args.min_time))
        print(f"round {r + 1}/{args.repeats} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)

    probe = rng.integers(0, 256, (256, *shape), dtype=np.uint8)
    fp32 = engines["torch eager fp32"](probe)
    bf16 = variants["torch bf16 autocast"](torch.from_numpy(probe)).numpy()
    ort = ort_engine(probe)
    result = {
        "model": label,
        "input_shape": list(shape),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "onnxruntime": _ort_version(), "python": platform.python_version()},
        "repeats": args.repeats,
        "single_image_us": {name: {"p50": 1e6 * statistics.median(p for p, _ in v),
                                   "p90": 1e6 * statistics.median(q for _, q in v),
                                   "rounds": [[1e6 * p, 1e6 * q] for p, q in v]} for name, v in single.items()},
        "throughput_img_s": {name: {str(b): {"median": statistics.median(v), "rounds": v} for b, v in per.items()}
                             for name, per in batched.items()},
        "max_prob_diff_vs_torch_fp32": {"onnxruntime": float(np.abs(ort - fp32).max()),
                                        "torch bf16 autocast": float(np.abs(bf16 - fp32).max())},
    }
    if quant:
        result["max_prob_diff_vs_torch_fp32"]["onnxruntime int8"] = float(
            np.abs(engines["onnxruntime int8"](probe) - fp32).max())
        result["test_accuracy"] = {"fp32": quant.fp32_acc, "int8": quant.int8_acc, "drop_points": quant.drop,
                                   "images": quant.images, "calibration_images": quant.calibration}
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    if args.json:
        print(json.dumps(result, indent=1))
        return
    m = result["machine"]
    print(f"{label}, input {shape}; {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} "
          f"threads), onnxruntime {m['onnxruntime']}; median of {args.repeats} rounds")
    print("\nSingle image (uint8 → probabilities), µs:")
    print(f"  {'engine':<26}{'p50':>9}{'p90':>9}")
    for name, v in result["single_image_us"].items():
        print(f"  {name:<26}{v['p50']:>9.0f}{v['p90']:>9.0f}")
    print("\nBatched throughput (uint8 → probabilities), images/s:")
    print(f"  {'batch':<26}" + "".join(f"{b:>9}" for b in args.batches))
    for name, per in result["throughput_img_s"].items():
        print(f"  {name:<26}" + "".join(f"{per[str(b)]['median']:>9.0f}" for b in args.batches))
    diffs = result["max_prob_diff_vs_torch_fp32"]
    print("\nmax |prob - torch fp32| over 256 random images: "
          + ", ".join(f"{name} {d:.1e}" for name, d in diffs.items()))
    if quant:
        acc = result["test_accuracy"]
        print(f"test accuracy ({acc['images']:,} images): fp32 {acc['fp32']:.2%}, int8 {acc['int8']:.2%} "
              f"(drop {acc['drop_points']:.2f} points)")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
