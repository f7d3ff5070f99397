"""A/B of the engine's CPU optimisations on the first tutorial's CNN, in one process, alternating.

Variants (training img/s over a fixed slice of Fashion-MNIST after a warm-up):
  full       everything on (native first-block kernel, ReLU after pool)
  no-native  the native kernel off (eager PyTorch for the first block)
  no-reorder also ReLU before the max-pool, as written (every layer plain eager)
  compile    `full` under torch.compile (the compile time is printed separately)

Usage: python benchmarks/engine_ab.py [--batch 128 256] [--precision bf16 fp32] [--repeats 4] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import cnnlab.native as native
from cnnlab.config import TrainConfig
from cnnlab.data.datasets import load_dataset
from cnnlab.data.tensors import Normalizer
from cnnlab.models import create_model
from cnnlab.training.engine import make_engine
from cnnlab.training.optim import make_optimizer, make_param_groups
from cnnlab.training.trainer import train_one_epoch


def variant_model(name: str):
    model = create_model("cnn_64x2", num_classes=10, input_shape=(1, 28, 28))
    if name in ("no-native", "no-reorder"):
        model._kernel = [False] * len(model._kernel)
    if name == "no-reorder":
        model._fuse = [False] * len(model._fuse)
    return model.to(memory_format=torch.channels_last)


def run(train, name: str, batch: int, precision: str, images: int) -> float:
    cfg = TrainConfig(batch_size=batch, precision=precision)
    engine = make_engine(cfg)
    torch.manual_seed(0)
    model = variant_model(name)
    opt = make_optimizer(make_param_groups(model, cfg), cfg, engine.device)
    gen = torch.Generator().manual_seed(0)
    warm, data = train.subset(torch.arange(1024)), train.subset(torch.arange(images))
    train_one_epoch(model, opt, warm, batch_size=batch, normalizer=Normalizer(), engine=engine, generator=gen)
    start = time.perf_counter()
    train_one_epoch(model, opt, data, batch_size=batch, normalizer=Normalizer(), engine=engine, generator=gen)
    return images / (time.perf_counter() - start)


def compiled(train, batch: int, images: int) -> tuple[float, float]:
    """img/s of a torch.compile'd forward+backward step (bf16, channels-last) and the compile seconds."""
    model = variant_model("full")
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)
    x_all = train.images[:images].float().div(255).contiguous(memory_format=torch.channels_last)
    y_all = train.labels[:images]

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()

    step_c = torch.compile(step)
    t0 = time.perf_counter()
    for i in range(3):
        opt.zero_grad(set_to_none=True)
        step_c(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
        opt.step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = images // batch
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        step_c(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
        opt.step()
    return n * batch / (time.perf_counter() - t0), warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[128])
    ap.add_argument("--precision", nargs="+", default=["bf16"])
    ap.add_argument("--variants", nargs="+", default=["full", "no-native", "no-reorder"])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--images", type=int, default=15360)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = ap.parse_args()
    train, _ = load_dataset("fashion-mnist")
    native.library()
    results: dict[tuple, list[float]] = {}
    for _ in range(args.repeats):
        for batch in args.batch:
            for prec in args.precision:
                for name in args.variants:
                    results.setdefault((name, batch, prec), []).append(run(train, name, batch, prec, args.images))
    print("| variant | batch | precision | img/s (median) | runs |\n|---|---:|---|---:|---|")
    for (name, batch, prec), v in results.items():
        print(f"| {name} | {batch} | {prec} | {statistics.median(v):,.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    if args.compile:
        ips, warm = compiled(train, args.batch[0], args.images)
        print(f"\ntorch.compile, batch {args.batch[0]} bf16: {ips:,.0f} img/s after {warm:.1f} s of compilation")


if __name__ == "__main__":
    main()
