"""The sweep behind configs/fast/fashion-mnist-tutorial.yaml: the tutorial CNN (cnn_64x2) on the full
Fashion-MNIST, towards >= 90.5% test accuracy in the fewest images seen (docs/benchmarks.md).

Each variant trains in this process through the library (``cnnlab.runs.experiment.train``), starting from the
default recipe configs/fashion_mnist_cnn.yaml (Adam, one-cycle, batch 128, label smoothing 0.1, standardised
inputs) with the variant's overrides. Per variant it records the training seconds (the sum of the epochs'
``seconds``), the images trained on, the test accuracy of the plain model (the last epoch validates on the
test set) and with mirror TTA (the final test). Accuracy is deterministic on a CPU for a seed; seconds depend on
the machine's load, so the column to compare under load is the images seen.

    CNNLAB_DATA=DATA python benchmarks/tutorial_sweep.py [--json FILE] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config

# name -> overrides; a pass is 60,000 images
VARIANTS: dict[str, dict] = {
    "default 1 pass": {"train.epochs": 1},
    "1 pass, ema .99": {"train.epochs": 1, "train.ema": 0.99},
    "1 pass, lr .006": {"train.epochs": 1, "train.lr": 0.006},
    "1 pass, lr .008, ema .99": {"train.epochs": 1, "train.lr": 0.008, "train.ema": 0.99},
    "1 pass, batch 256, lr .006": {"train.epochs": 1, "train.batch_size": 256, "train.lr": 0.006},
    "1 pass, batch 64, lr .003": {"train.epochs": 1, "train.batch_size": 64, "train.lr": 0.003},
    "1 pass, no smoothing": {"train.epochs": 1, "train.label_smoothing": 0.0},
    "1 pass, flips": {"train.epochs": 1, "data.augment.hflip": True},
    "1.25 passes": {"train.epochs": 5, "train.steps_per_epoch": 117},
    "1.25 passes, ema .99": {"train.epochs": 5, "train.steps_per_epoch": 117, "train.ema": 0.99},
    "1.5 passes": {"train.epochs": 3, "train.steps_per_epoch": 235},
    "1.5 passes, ema .99": {"train.epochs": 3, "train.steps_per_epoch": 235, "train.ema": 0.99},
    "2 passes": {"train.epochs": 2},
    "2 passes, ema .995": {"train.epochs": 2, "train.ema": 0.995},
    "2 passes, flips": {"train.epochs": 2, "data.augment.hflip": True},
    "2.5 passes": {"train.epochs": 5, "train.steps_per_epoch": 235},
    # second round (after the native kernel's AVX-512 loops, whose backward sums in another order)
    "2.25 passes": {"train.epochs": 5, "train.steps_per_epoch": 211},
    "2.25 passes, lr .005": {"train.epochs": 5, "train.steps_per_epoch": 211, "train.lr": 0.005},
    "2.25 passes, ema .995": {"train.epochs": 5, "train.steps_per_epoch": 211, "train.ema": 0.995},
    "2.25 passes, batch 192, lr .005": {"train.epochs": 5, "train.steps_per_epoch": 141, "train.batch_size": 192,
                                        "train.lr": 0.005},
    "2.25 passes, lr .005, seed 1": {"train.epochs": 5, "train.steps_per_epoch": 211, "train.lr": 0.005,
                                     "train.seed": 1},
    "2.25 passes, lr .005, seed 2": {"train.epochs": 5, "train.steps_per_epoch": 211, "train.lr": 0.005,
                                     "train.seed": 2},
    "2 passes in 5, lr .005": {"train.epochs": 5, "train.steps_per_epoch": 188, "train.lr": 0.005},
    "2 passes in 5, lr .006": {"train.epochs": 5, "train.steps_per_epoch": 188, "train.lr": 0.006},
    "2.5 passes, seed 1": {"train.epochs": 5, "train.steps_per_epoch": 235, "train.seed": 1},
    "2.5 passes, seed 2": {"train.epochs": 5, "train.steps_per_epoch": 235, "train.seed": 2},
}


def run_variant(name: str, overrides: dict) -> dict:
    sets = [("train.tta", "hflip"), ("train.seed", 0), ("train.validation_freq", 1000), *overrides.items()]
    cfg = experiment_config("fashion_mnist_cnn", overrides=sets)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(cfg, out=Path(tmp) / "run", progress=False, log=lambda s: None)
        wall = time.perf_counter() - t0
    per_pass = -(-60_000 // cfg.train.batch_size)  # batches in a pass (the last one partial)
    steps = min(cfg.train.steps_per_epoch or per_pass, per_pass)
    images = min(steps * cfg.train.batch_size, 60_000) * cfg.train.epochs
    return {"variant": name, "overrides": overrides, "images": images, "passes": round(images / 60_000, 3),
            "train_s": round(sum(h["seconds"] for h in result.history), 2), "wall_in_process_s": round(wall, 2),
            "acc": result.history[-1]["val_acc"], "acc_tta": result.test.acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows to this file (rewritten after each variant)")
    ap.add_argument("--only", help="run the variants whose name contains this")
    args = ap.parse_args()
    rows = []
    for name, overrides in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        rows.append(run_variant(name, overrides))
        r = rows[-1]
        print(f"| {name} | {r['passes']} | {r['train_s']} | {100 * r['acc']:.2f} | {100 * r['acc_tta']:.2f} |",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
