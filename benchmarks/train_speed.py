"""One training epoch of the first tutorial's CNN on Fashion-MNIST: a plain PyTorch port vs cnnlab's engine.

In one process: (a) an eager PyTorch port of the tutorial's Keras code (fp32, batch 32, Adam, no tricks),
(b) cnnlab's engine at its default recipe (the config's batch size, bf16 autocast where native,
channels-last, fused Adam, resident uint8 data). Then, when ../shared/peers/keras_seed.sh exists, the
tutorial's own Keras code (its ``throughput`` mode, same epoch). Prints img/s and the ratios, and the
inference img/s of cnnlab's evaluation path (uint8 in, normalise, forward, loss and confusion) on the test set.

``--device cuda`` runs both on the GPU (timings end with ``torch.cuda.synchronize``); ``--precision`` picks
cnnlab's bf16 or fp32; ``--dataset fashion-mnist-sample --tile 10`` stands in for the real set offline.

Usage: python benchmarks/train_speed.py [--config configs/fashion_mnist_cnn.yaml] [--repeats 3] [--no-keras]
       [--device cpu|cuda] [--precision auto|bf16|fp32] [--dataset fashion-mnist] [--tile 1] [--json FILE]
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
from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.models import create_model
from cnnlab.training.engine import available_cores, make_engine
from cnnlab.training.optim import make_optimizer, make_param_groups
from cnnlab.training.trainer import evaluate, train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "keras_seed.sh"


def sync(device: torch.device) -> None:
    """Waits for queued GPU work, so that a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_port_epoch(x_u8: torch.Tensor, y: torch.Tensor, batch: int = 32, device: str = "cpu") -> float:
    """The tutorial's model.fit(epochs=1) written as a textbook PyTorch loop; returns img/s."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = x_u8.to(dev).float() / 255.0  # the tutorial's training_images / 255.0, done up front like Keras
    y = y.to(dev)
    perm = torch.randperm(len(x), device=dev)
    sync(dev)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        idx = perm[i:i + batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(dev)
    return len(x) / (time.perf_counter() - start)


def cnnlab_epoch(cfg, train, test=None) -> tuple[float, float | None]:
    """One epoch through cnnlab's ``train_one_epoch`` at the config's recipe, then (with ``test``) one pass of
    ``evaluate`` over it; returns (training img/s, inference img/s or None)."""
    engine = make_engine(cfg.train)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=10, input_shape=(1, 28, 28)).to(engine.device)
    model = model.to(memory_format=torch.channels_last) if engine.channels_last else model
    opt = make_optimizer(make_param_groups(model, cfg.train), cfg.train, engine.device)
    gen = torch.Generator().manual_seed(0)  # the order is drawn on the CPU, as the trainer does
    train = train.to(engine.device)
    warm = train.subset(torch.arange(2048))
    train_one_epoch(model, opt, warm, batch_size=cfg.train.batch_size, normalizer=Normalizer(), engine=engine, generator=gen)
    sync(engine.device)
    start = time.perf_counter()
    train_one_epoch(model, opt, train, batch_size=cfg.train.batch_size, normalizer=Normalizer(), engine=engine,
                    generator=gen, label_smoothing=cfg.train.label_smoothing)
    sync(engine.device)
    train_rate = len(train) / (time.perf_counter() - start)
    if test is None:
        return train_rate, None
    test = test.to(engine.device)
    evaluate(model, test, normalizer=Normalizer(), engine=engine, batch_size=cfg.train.eval_batch_size)  # warm-up
    sync(engine.device)
    start = time.perf_counter()
    evaluate(model, test, normalizer=Normalizer(), engine=engine, batch_size=cfg.train.eval_batch_size)
    sync(engine.device)
    return train_rate, len(test) / (time.perf_counter() - start)


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
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), help="train.device (default: the config's)")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="train.precision (default: the config's)")
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, or fashion-mnist-sample offline")
    ap.add_argument("--tile", type=int, default=1, help="repeat the training images this many times (the sample)")
    args = ap.parse_args()
    sets = [(f"train.{k}", v) for k in ("device", "precision") if (v := getattr(args, k)) is not None]
    cfg = load_config(args.config, sets)
    train, test = load_dataset(args.dataset)
    if args.tile > 1:
        train = ImageData(train.images.repeat(args.tile, 1, 1, 1), train.labels.repeat(args.tile), train.classes,
                          train.name)
    torch.set_num_threads(available_cores())
    engine = make_engine(cfg.train)
    plain, ours, infer = [], [], []
    for r in range(args.repeats):  # alternate, so machine noise hits both alike
        plain.append(plain_port_epoch(train.images, train.labels, device=str(engine.device)))
        rate, inf = cnnlab_epoch(cfg, train, test)
        ours.append(rate)
        infer.append(inf)
        print(f"repeat {r + 1}: plain port {plain[-1]:,.0f} img/s, cnnlab {ours[-1]:,.0f} img/s, "
              f"inference {inf:,.0f} img/s", flush=True)
    p, o, i = statistics.median(plain), statistics.median(ours), statistics.median(infer)
    n = len(train)
    where = torch.cuda.get_device_name() if engine.device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n{train.name}, tutorial CNN, one epoch of {n:,} images, {engine.device.type} ({where})")
    print(f"(a) plain PyTorch port, fp32, batch 32:        {p:8,.0f} img/s  ({n / p:5.1f} s/epoch)")
    print(f"(b) cnnlab engine ({engine.precision}, batch {cfg.train.batch_size}):          {o:8,.0f} img/s  "
          f"({n / o:5.1f} s/epoch)  = {o / p:.2f}x (a)")
    print(f"(i) cnnlab inference ({engine.precision}, batch {cfg.train.eval_batch_size}):  {i:8,.0f} img/s")
    result = {"plain_img_s": p, "cnnlab_img_s": o, "ratio_plain": o / p, "batch": cfg.train.batch_size,
              "precision": engine.precision, "repeats": args.repeats, "inference_img_s": i,
              "device": engine.device.type, "device_name": where, "dataset": train.name, "images": n,
              "torch": torch.__version__}
    k = None if args.no_keras or engine.device.type == "cuda" else keras_epoch()
    if k:
        print(f"(k) Keras peer (tutorial code, batch 32):     {k:8,.0f} img/s  ({60000 / k:5.1f} s/epoch)")
        print(f"cnnlab / Keras = {o / k:.2f}x   plain port / Keras = {p / k:.2f}x")
        result.update(keras_img_s=k, ratio_keras=o / k)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
