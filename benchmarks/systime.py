"""System time and page faults of training steps: why ``mnist_cnn_dropout`` (batch 200) spent ~27% in the kernel.

Runs ``--steps`` real training steps (cnnlab's own ``train_one_epoch`` on the first images of MNIST, the
trainer's engine: bf16 autocast where native, channels-last) for each variant, in one process, the variants
interleaved over ``--repeats`` rounds, and reports per step the median wall, user and system milliseconds and
minor page faults (``getrusage`` deltas):

    .venv/bin/python benchmarks/systime.py [--steps 30] [--repeats 3] [--variants cnn_32_64_dropout:200 ...]

A variant is ``MODEL:BATCH`` with optional flags ``:nodrop`` (dropout layers replaced by identities),
``:fp32`` (no bf16 autocast) and ``:nchw`` (no channels-last).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
from torch import nn

DEFAULT = ["cnn_32_64_dropout:200", "cnn_32_64_dropout:200:nodrop", "cnn_32_64_dropout:32", "cnn_32x1:200",
           "cnn_32x1:32"]


def build(spec: str):
    from cnnlab.models import create_model

    name, batch, *flags = spec.split(":")
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, input_shape=(1, 28, 28))
    if "nodrop" in flags:
        for m in model.modules():
            for child_name, child in m.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(m, child_name, nn.Identity())
    if "nchw" not in flags:
        model = model.to(memory_format=torch.channels_last)
    return model, int(batch), flags


def measure(model, batch: int, steps: int, data, engine, normalizer) -> dict[str, float]:
    from cnnlab.training.epoch import train_one_epoch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    order = torch.arange(batch * 3)
    train_one_epoch(model, opt, data, batch_size=batch, normalizer=normalizer, engine=engine, generator=g,
                    order=order)  # warm-up: first calls pick kernels and allocate
    order = torch.arange(batch * steps) % len(data)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    train_one_epoch(model, opt, data, batch_size=batch, normalizer=normalizer, engine=engine, generator=g,
                    order=order)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return {"wall_ms": 1e3 * (t1 - t0) / steps, "user_ms": 1e3 * (r1.ru_utime - r0.ru_utime) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps, "minflt": (r1.ru_minflt - r0.ru_minflt) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=DEFAULT)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="leave glibc's trim/mmap thresholds (the trainer sets them: cnnlab.native.heap)")
    args = ap.parse_args()
    if not args.glibc_defaults:
        from cnnlab.native.heap import keep_freed_memory

        print(f"glibc thresholds set: {keep_freed_memory()}")

    from cnnlab.data.datasets import load_dataset
    from cnnlab.data.prepare import make_normalizer
    from cnnlab.training.engine import Engine, cpu_has_bf16

    train, _ = load_dataset("mnist")
    engine = Engine(torch.device("cpu"), torch.bfloat16 if cpu_has_bf16() else None, True)
    normalizer = make_normalizer("auto", train)
    models = {v: build(v) for v in args.variants}
    rounds: dict[str, list[dict[str, float]]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for v, (model, batch, flags) in models.items():
            eng = Engine(engine.device, None if "fp32" in flags else engine.amp_dtype, "nchw" not in flags)
            rounds[v].append(measure(model, batch, args.steps, train, eng, normalizer))
    out = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in rounds.items()}
    if args.json:
        print(json.dumps({"load": os.getloadavg(), "steps": args.steps, "median": out, "rounds": rounds}, indent=1))
        return
    print(f"per training step, median of {args.repeats} interleaved rounds of {args.steps} steps "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"  {'variant':<32}{'wall ms':>9}{'user ms':>9}{'sys ms':>9}{'sys %':>7}{'faults':>9}{'faults/img':>11}")
    for v, m in out.items():
        batch = models[v][1]
        print(f"  {v:<32}{m['wall_ms']:>9.1f}{m['user_ms']:>9.1f}{m['sys_ms']:>9.1f}"
              f"{100 * m['sys_ms'] / max(m['user_ms'] + m['sys_ms'], 1e-9):>7.0f}{m['minflt']:>9.0f}"
              f"{m['minflt'] / batch:>11.1f}")


if __name__ == "__main__":
    main()
