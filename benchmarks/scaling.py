"""How training throughput of the first tutorial's CNN scales with batch size and CPU threads, and its memory.

Each (threads, batch) point runs in a fresh process (thread pools and the allocator start clean, and the
peak resident memory belongs to that point alone): it builds the model, runs cnnlab's ``train_one_epoch``
on a 2,048-image warm-up and then on ``--images`` real Fashion-MNIST images (random ones when the data is
not here), and reports img/s plus the peak RSS growth during training (activations, gradients,
optimiser state and allocator slack for one batch: "memory per batch").

Usage: python benchmarks/scaling.py [--batches 32 64 128 256 512] [--threads 1 2] [--precision bf16]
                                    [--json docs/results/scaling.json] [--plot docs/scaling.png]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    """Current resident set size (MiB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def point(threads: int, batch: int, precision: str, images: int) -> dict:
    """One measurement, in this process (called in a child by ``main``)."""
    import torch

    from cnnlab.config import TrainConfig
    from cnnlab.data.datasets import load_dataset
    from cnnlab.data.tensors import ImageData, Normalizer
    from cnnlab.errors import CnnlabError
    from cnnlab.models import create_model
    from cnnlab.training.engine import make_engine
    from cnnlab.training.optim import make_optimizer, make_param_groups
    from cnnlab.training.trainer import train_one_epoch

    torch.set_num_threads(threads)
    try:
        train, _ = load_dataset("fashion-mnist")
        data = train.subset(torch.arange(images))
    except CnnlabError:  # no data here: random pixels cost the same per step
        g = torch.Generator().manual_seed(0)
        data = ImageData(torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (images,), generator=g), tuple(str(i) for i in range(10)))
    cfg = TrainConfig(batch_size=batch, precision=precision, lr=1e-3)
    engine = make_engine(cfg)
    torch.manual_seed(0)
    model = create_model("cnn_64x2", num_classes=10, input_shape=(1, 28, 28)).to(memory_format=torch.channels_last)
    opt = make_optimizer(make_param_groups(model, cfg), cfg, engine.device)
    gen = torch.Generator().manual_seed(0)
    base = _rss_mib()
    run = dict(batch_size=batch, normalizer=Normalizer(), engine=engine, generator=gen)
    train_one_epoch(model, opt, data.subset(torch.arange(2048)), **run)
    start = time.perf_counter()
    train_one_epoch(model, opt, data, **run)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    return {"threads": threads, "batch": batch, "precision": engine.precision,
            "img_s": images / seconds, "peak_rss_growth_mib": peak - base}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for t in sorted({r["threads"] for r in rows}):
        rs = [r for r in rows if r["threads"] == t]
        ax1.plot([r["batch"] for r in rs], [r["img_s"] for r in rs], "o-", label=f"{t} thread{'s' * (t > 1)}")
        ax2.plot([r["batch"] for r in rs], [r["peak_rss_growth_mib"] for r in rs], "o-", label=f"{t} threads")
    for ax, label in ((ax1, "training img/s"), (ax2, "peak memory growth (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax1.legend()
    ax1.set_title("Tutorial CNN, Fashion-MNIST: throughput")
    ax2.set_title("Memory of one training batch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--images", type=int, default=20000, help="images timed per point (after the warm-up)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--plot", help="draw throughput and memory to this PNG")
    ap.add_argument("--point", nargs=2, type=int, metavar=("THREADS", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        print(json.dumps(point(*args.point, args.precision, args.images)))
        return
    rows = []
    print("| threads | batch | precision | img/s | peak memory growth MiB |\n|---:|---:|---|---:|---:|")
    for threads in args.threads:
        for batch in args.batches:
            out = subprocess.run([sys.executable, __file__, "--point", str(threads), str(batch), "--precision",
                                  args.precision, "--images", str(args.images)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"point ({threads}, {batch}) failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"| {threads} | {batch} | {r['precision']} | {r['img_s']:,.0f} | {r['peak_rss_growth_mib']:.0f} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
