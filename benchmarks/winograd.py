"""A/B of Winograd F(2x2, 3x3) (cnnlab.native.winograd) against oneDNN's direct convolution, in one process,
alternating (issue 15, item 3).

(a) the tutorial CNN's second convolution alone (64→64, 3x3, 13x13 → 11x11, the config's batch), forward +
    both backward passes, under the engine's precision and channels-last: eager ``F.conv2d`` vs Winograd,
    and, as the floor any faster transform (C or otherwise) could reach, Winograd's three sets of 16
    batched GEMMs alone (forward, grad-input, grad-weight) with the transforms left out;
(b) training img/s of the tutorial CNN (``train_one_epoch`` over ``--images`` Fashion-MNIST images after a
    warm-up) with the Winograd path on and off;
(c) with ``--accuracy``: test accuracy after the config's epochs (3) for each, same seed.

Usage: python benchmarks/winograd.py [--steps 100] [--repeats 5] [--images 20000] [--precision bf16|fp32] [--threads N]
       [--clock wall|cpu] [--accuracy]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.config import load_config
from cnnlab.data.datasets import load_dataset
from cnnlab.data.tensors import Normalizer
from cnnlab.models import create_model
from cnnlab.native import winograd
from cnnlab.runs import experiment
from cnnlab.training.engine import make_engine
from cnnlab.training.optim import make_optimizer, make_param_groups
from cnnlab.training.trainer import train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
# wall time by default; --clock cpu: CPU seconds of the process, which time slices lost to other processes'
# jobs do not inflate (all compute runs on the calling thread with --threads 1, plus the trainer's helper)
CLOCK = [time.perf_counter]


def conv_step(fn, x, w, b, engine) -> float:
    """Seconds of one forward + backward (grad-input, grad-weight, grad-bias) of ``fn``."""
    start = CLOCK[0]()
    with engine.autocast():
        y = fn(x, w, b)
    y.backward(torch.ones_like(y))
    return CLOCK[0]() - start


def gemm_step(v, u, vt, dm) -> float:
    """Seconds of Winograd's GEMMs alone: forward V@U, grad-input dM@U^T and grad-weight V^T@dM, 16 each."""
    start = CLOCK[0]()
    torch.bmm(v, u), torch.bmm(dm, u.transpose(1, 2)), torch.bmm(vt, dm)
    return CLOCK[0]() - start


def part_a(cfg, steps: int) -> dict[str, list[float]]:
    """ms per fwd+bwd step of each variant, the variants taking turns step by step (bursts of load from
    other processes then hit all alike)."""
    engine = make_engine(cfg.train)
    n, c, f = cfg.train.batch_size, 64, 64
    torch.manual_seed(0)
    x = torch.randn(n, c, 13, 13).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(f, c, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.zeros(f, requires_grad=True)
    dtype, p = engine.amp_dtype or torch.float32, n * 36  # 36 2x2 tiles cover the 11x11 output
    # every GEMM operand in its fastest layout (V^T contiguous too), as a free transform could leave it
    gemm = [torch.randn(*s).to(dtype) for s in ((16, p, c), (16, c, f), (16, c, p), (16, p, f))]
    runs = {"F.conv2d": lambda: conv_step(F.conv2d, x, w, b, engine),
            "winograd": lambda: conv_step(winograd.conv3x3, x, w, b, engine),
            "winograd GEMMs only": lambda: gemm_step(*gemm)}
    for fn in runs.values():  # warm-up
        fn(), fn()
    res: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in runs.items():
            res[k].append(1000 * fn())
    return res


class GemmsOnly(torch.autograd.Function):
    """A stand-in for the 64→64 conv that runs only Winograd's three sets of 16 GEMMs on fixed operands
    (no transforms) and returns zeros of the right shapes: the speed no transform implementation could beat."""

    buffers: dict = {}

    @staticmethod
    def forward(ctx, x, weight):
        n, c, h, w = x.shape
        f, t = weight.shape[0], -(-(h - 2) // 2) * -(-(w - 2) // 2)
        key = (n, c, f, h, w, x.dtype)
        if key not in GemmsOnly.buffers:
            p = n * t
            GemmsOnly.buffers[key] = tuple(torch.randn(*s).to(x.dtype) for s in ((16, p, c), (16, c, f), (16, c, p),
                                                                                (16, p, f)))
        v, u, _, _ = GemmsOnly.buffers[key]
        torch.bmm(v, u)
        ctx.key = key
        return x.new_zeros(n, h - 2, w - 2, f).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        n, c, f, h, w, dtype = ctx.key
        v, u, vt, dm = GemmsOnly.buffers[ctx.key]
        torch.bmm(dm, u.transpose(1, 2)), torch.bmm(vt, dm)
        return grad.new_zeros(n, h, w, c).permute(0, 3, 1, 2), grad.new_zeros(f, c, 3, 3)


def gemms_only(x, weight, bias, padding=(0, 0, 0, 0)):
    """:func:`winograd.conv3x3`'s signature around :class:`GemmsOnly` (a timing floor, not a convolution)."""
    if torch.is_autocast_enabled("cpu"):
        x, weight = x.to(torch.get_autocast_dtype("cpu")), weight.to(torch.get_autocast_dtype("cpu"))
    y = GemmsOnly.apply(F.pad(x, padding) if any(padding) else x, weight)
    return y + bias.view(1, -1, 1, 1).to(y.dtype) if bias is not None else y


VARIANTS = {"eager": None, "winograd": winograd.conv3x3, "GEMMs only": gemms_only}


def train_rate(cfg, train, images: int, variant: str) -> float:
    """Training img/s over ``images`` images after a 2,048-image warm-up, with the 3x3 convs done by
    ``variant`` (eager: Winograd off, F.conv2d)."""
    winograd.enabled = variant != "eager"
    if winograd.enabled:
        winograd.conv3x3 = VARIANTS[variant]
    engine = make_engine(cfg.train)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=10, input_shape=(1, 28, 28))
    model = model.to(memory_format=torch.channels_last) if engine.channels_last else model
    opt = make_optimizer(make_param_groups(model, cfg.train), cfg.train, engine.device)
    gen = torch.Generator().manual_seed(0)
    kw = {"batch_size": cfg.train.batch_size, "normalizer": Normalizer(), "engine": engine, "generator": gen}
    train_one_epoch(model, opt, train.subset(torch.arange(2048)), **kw)
    start = CLOCK[0]()
    train_one_epoch(model, opt, train.subset(torch.arange(images)), label_smoothing=cfg.train.label_smoothing, **kw)
    return images / (CLOCK[0]() - start)


def accuracy(on: bool, config: str) -> float:
    """Test accuracy of a full training of the config (its epochs, its seed) into a temporary run folder."""
    winograd.enabled = on
    with tempfile.TemporaryDirectory() as tmp:
        result = experiment.train(load_config(config), out=Path(tmp) / "run", progress=False, log=lambda _: None)
    return float(result.test.acc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist_cnn.yaml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=20000, help="training images per run in (b); 0 skips (b)")
    ap.add_argument("--steps", type=int, default=100, help="alternating steps of each variant in (a)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"))
    ap.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time, for a machine that other jobs load")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="what (b) compares; eager first")
    ap.add_argument("--skip-conv", action="store_true", help="skip (a)")
    ap.add_argument("--accuracy", action="store_true", help="also (c): test accuracy after the config's epochs")
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [("train.precision", args.precision)] if args.precision else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {make_engine(cfg.train).precision}, "
          f"{args.clock} clock")
    if not args.skip_conv:
        res = part_a(cfg, args.steps)
        base = res["F.conv2d"]
        print(f"(a) conv 64→64 3x3 on 13x13, batch {cfg.train.batch_size}, fwd+bwd, {args.steps} alternating steps:")
        for k, v in res.items():
            pair = statistics.median(a / b for a, b in zip(base, v, strict=True))
            print(f"    {k:20s} median {statistics.median(v):7.2f} ms, min {min(v):7.2f} ms; speed-up over "
                  f"F.conv2d: {statistics.median(base) / statistics.median(v):.2f}x of medians, "
                  f"{pair:.2f}x median per step", flush=True)
    if args.images <= 0:
        return
    train, _ = load_dataset("fashion-mnist")
    real = winograd.conv3x3
    rates: dict[str, list[float]] = {k: [] for k in args.variants}
    for _ in range(args.repeats):
        for k in args.variants:
            rates[k].append(train_rate(cfg, train, args.images, k))
            print(f"    {k}: {rates[k][-1]:,.0f} img/s", flush=True)
    winograd.conv3x3 = real
    base = statistics.median(rates["eager"])
    print(f"(b) training img/s over {args.images:,} images (median of {args.repeats}):")
    for k, v in rates.items():
        pairs = ", ".join(f"{b / a:.3f}" for a, b in zip(rates["eager"], v, strict=True))
        print(f"    {k:12s} {statistics.median(v):7,.0f} img/s  ratio {statistics.median(v) / base:.3f}"
              f"   (per-pair ratios: {pairs}; runs: {', '.join(f'{r:,.0f}' for r in v)})")
    if args.accuracy:
        for on in (False, True):
            print(f"(c) winograd {'on' if on else 'off'}: test accuracy {accuracy(on, args.config):.4f}")


if __name__ == "__main__":
    main()
