"""PyTorch's own int8 path (x86 quantisation backend, FX graph mode) on a trained run, against its fp32 model.

The issue's fallback when ONNX Runtime's int8 kernels fall short: post-training static quantisation with
``torch.ao.quantization`` (``get_default_qconfig_mapping("x86")``, per-channel weights), calibrated on the
same 300 training images ``cnnlab export --quantize int8`` uses, then test accuracy of both models and
batched img/s (batch 1024) and single-image p50, interleaved over 3 rounds in one process:

    .venv/bin/python benchmarks/torch_int8.py RUN_DIR
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
import warnings

import numpy as np
import torch


def main() -> None:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from cnnlab.data.prepare import load_test_data, load_train_data
    from cnnlab.runs.loaded import load_run

    warnings.simplefilter("ignore")  # torch.ao.quantization announces its deprecation on every call
    torch.backends.quantized.engine = "x86"
    lr = load_run(sys.argv[1])
    model = lr.model.eval()
    train, test = load_train_data(lr.cfg.data), load_test_data(lr.cfg.data)
    idx = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(train))[:300]))
    calib = lr.normalizer(train.images[idx]).float()
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.inference_mode():
        for i in range(0, len(calib), 32):
            prepared(calib[i:i + 32])
    q = convert_fx(prepared)
    x = lr.normalizer(test.images).float()
    with torch.inference_mode():
        acc = {name: (m(x).argmax(1) == test.labels).float().mean().item() for name, m in (("fp32", model), ("int8", q))}
    print(f"test accuracy: fp32 {acc['fp32']:.2%}, x86 int8 {acc['int8']:.2%}")
    x1024, x1 = x[:1024], x[:1]
    with torch.inference_mode():
        for r in range(3):
            print(f"round {r + 1}: batch 1024 fp32 {rate(model, x1024):.0f} img/s, int8 {rate(q, x1024):.0f} img/s; "
                  f"single p50 fp32 {p50(model, x1):.0f} µs, int8 {p50(q, x1):.0f} µs")
    print(f"load average {os.getloadavg()[0]:.1f}")


def rate(fn, x: torch.Tensor, n: int = 5) -> float:
    """img/s over the median of ``n`` calls after one warm-up."""
    return len(x) / median_seconds(fn, x, n, warmup=1)


def p50(fn, x: torch.Tensor, n: int = 300) -> float:
    """Median µs of ``n`` single calls after 20 warm-up calls."""
    return 1e6 * median_seconds(fn, x, n, warmup=20)


def median_seconds(fn, x: torch.Tensor, n: int, *, warmup: int) -> float:
    """Median seconds of ``n`` calls ``fn(x)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
