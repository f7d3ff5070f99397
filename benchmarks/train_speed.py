"""One training epoch of the first tutorial's CNN on Fashion-MNIST: a plain PyTorch port vs cnnlab's engine.

In one process: (a) an eager PyTorch port of the tutorial's Keras code (fp32, batch 32, Adam, no tricks),
(b) cnnlab's engine at its default recipe (the config's batch size, bf16 autocast where native,
channels-last, fused Adam, resident uint8 data). Then, when ../shared/peers/keras_seed.sh exists, the
tutorial's own Keras code (its ``throughput`` mode, same epoch). Prints img/s and the ratios.

Usage: python benchmarks/train_speed.py [--config configs/fashion_mnist_cnn.yaml] [--repeats 3] [--no-keras]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import load_config
from cnnlab.data.datasets import load_dataset, locate
from cnnlab.data.tensors import Normalizer
from cnnlab.models import create_model
from cnnlab.training.engine import available_cores, make_engine
from cnnlab.training.optim import make_optimizer, make_param_groups
from cnnlab.training.trainer import train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "keras_seed.sh"


def plain_port_epoch(x_u8: torch.Tensor, y: torch.Tensor, batch: int = 32) -> float:
    """The tutorial's model.fit(epochs=1) written as a textbook PyTorch loop; returns img/s."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = x_u8.float() / 255.0  # the tutorial's training_images / 255.0, done up front like Keras
    perm = torch.randperm(len(x))
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(x) / (time.perf_counter() - start)


def cnnlab_epoch(cfg, train) -> float:
    """One epoch through cnnlab's ``train_one_epoch`` at the config's recipe; returns img/s."""
    engine = make_engine(cfg.train)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=10, input_shape=(1, 28, 28)).to(memory_format=torch.channels_last)
    opt = make_optimizer(make_param_groups(model, cfg.train), cfg.train, engine.device)
    gen = torch.Generator().manual_seed(0)
    warm = train.subset(torch.arange(2048))
    train_one_epoch(model, opt, warm, batch_size=cfg.train.batch_size, normalizer=Normalizer(), engine=engine, generator=gen)
    start = time.perf_counter()
    train_one_epoch(model, opt, train, batch_size=cfg.train.batch_size, normalizer=Normalizer(), engine=engine,
                    generator=gen, label_smoothing=cfg.train.label_smoothing)
    return len(train) / (time.perf_counter() - start)


def keras_epoch() -> float | None:
    """The Keras peer's one-epoch throughput (img/s), or None when the peer script is not here."""
    if not PEER.is_file():
        return None
    out = subprocess.run(["bash", str(PEER), str(locate("fashion-mnist")), "throughput"], capture_output=True, text=True)
    m = re.search(r"one epoch ([\d.]+) s, (\d+) img/s", out.stdout)
    if not m:
        print(f"keras peer failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "fashion_mnist_cnn.yaml"))
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of (a) and (b); medians reported")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    cfg = load_config(args.config)
    train, _ = load_dataset("fashion-mnist")
    torch.set_num_threads(available_cores())
    plain, ours = [], []
    for r in range(args.repeats):  # alternate, so machine noise hits both alike
        plain.append(plain_port_epoch(train.images, train.labels))
        ours.append(cnnlab_epoch(cfg, train))
        print(f"repeat {r + 1}: plain port {plain[-1]:,.0f} img/s, cnnlab {ours[-1]:,.0f} img/s", flush=True)
    p, o = statistics.median(plain), statistics.median(ours)
    engine = make_engine(cfg.train)
    print(f"\nFashion-MNIST, tutorial CNN, one epoch of 60,000 images, {torch.get_num_threads()} threads")
    print(f"(a) plain PyTorch port, fp32, batch 32:        {p:8,.0f} img/s  ({60000 / p:5.1f} s/epoch)")
    print(f"(b) cnnlab engine ({engine.precision}, batch {cfg.train.batch_size}):          {o:8,.0f} img/s  "
          f"({60000 / o:5.1f} s/epoch)  = {o / p:.2f}x (a)")
    result = {"plain_img_s": p, "cnnlab_img_s": o, "ratio_plain": o / p, "batch": cfg.train.batch_size,
              "precision": engine.precision, "repeats": args.repeats}
    k = None if args.no_keras else keras_epoch()
    if k:
        print(f"(k) Keras peer (tutorial code, batch 32):     {k:8,.0f} img/s  ({60000 / k:5.1f} s/epoch)")
        print(f"cnnlab / Keras = {o / k:.2f}x   plain port / Keras = {p / k:.2f}x")
        result.update(keras_img_s=k, ratio_keras=o / k)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
