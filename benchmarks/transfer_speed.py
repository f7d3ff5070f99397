"""Transfer-learning throughput at 224x224 (issue 15, item 5): training steps, and head-only epochs on cached features.

Part 1, ``steps``: img/s of training steps, batch 32, random uint8 images (the values do not change a step's time),
for each model x {``frozen`` (backbone frozen, BatchNorm in eval, only the head trains), ``full`` (fine-tune
everything)} and each engine, alternating in one process (``--repeats`` rounds; medians):

* ``cnnlab``: cnnlab's ``train_one_epoch`` as the trainer runs it: bf16 autocast where native, channels-last,
  fused Adam, uint8 batches normalised on the fly, the backbone frozen by ``BackboneFreeze``'s rules. Per step it
  still runs the backbone (the feature cache is part 2).
* ``plain fp32`` / ``plain bf16``: the obvious PyTorch loop: ``requires_grad_(False)`` on the backbone, the model in
  ``train()`` mode, float inputs, ``loss.backward(); opt.step()`` (``torch.autocast`` for bf16).
* ``keras``: benchmarks/keras_transfer_peer.py in the peer venv (``--keras-python``), Keras's ``ResNet50`` and
  ``MobileNetV2`` with ``weights=None`` (no internet here). Keras has no ResNet-18, so ``resnet50`` runs in
  cnnlab and plain PyTorch too, for a same-model comparison; MobileNetV2 is the same network in both.

Part 2, ``epochs``: a folder of ``--images`` random 224x224 JPEGs (80/20 train/validation), trained with the
backbone frozen for ``--epochs`` epochs through ``cnnlab.train`` with ``train.cache_features`` off and auto,
alternating. Reported: the median epoch time recomputing the backbone, the median head-only epoch on the cache
(epochs 2..N; epoch 1 also builds the cache), the cache's build time, and their ratio.

Usage: python benchmarks/transfer_speed.py [--part steps epochs] [--models resnet18 mobilenet_v2 resnet50]
       [--keras-only resnet50] [--repeats 2] [--steps 3] [--images 512] [--epochs 3] [--no-keras] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.models import create_model
from cnnlab.models.registry import model_meta
from cnnlab.training.engine import available_cores, make_engine
from cnnlab.training.epoch import train_one_epoch
from cnnlab.training.optim import make_optimizer, make_param_groups
from cnnlab.training.transfer import backbone_norms, set_backbone_frozen

ROOT = Path(__file__).resolve().parent
KERAS = {"resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}
GFLOPS = {"resnet18": 1.82, "resnet50": 4.11, "mobilenet_v2": 0.30}  # forward, 224x224 (torchvision's table)
CLASSES, SIZE = 10, 224


def _model(name: str, frozen: bool):
    torch.manual_seed(0)
    model = create_model(name, num_classes=CLASSES, input_shape=(3, SIZE, SIZE))
    head = {n for n, _ in model.named_parameters() if n.startswith(model_meta(name).head + ".")}
    set_backbone_frozen(model, head, frozen)
    return model, head


def cnnlab_steps(name: str, frozen: bool, data: ImageData, steps: int) -> float:
    """img/s of ``steps`` steps of cnnlab's training path (after one warm-up step)."""
    cfg = TrainConfig(batch_size=32, lr=1e-3)
    engine = make_engine(cfg)
    model, head = _model(name, frozen)
    model = model.to(memory_format=torch.channels_last) if engine.channels_last else model
    opt = make_optimizer(make_param_groups(model, cfg), cfg, engine.device)
    model.train()
    if frozen:  # what BackboneFreeze does at each epoch's start
        for m in backbone_norms(model, head):
            m.eval()
    gen = torch.Generator().manual_seed(0)
    warm = data.subset(torch.arange(cfg.batch_size))
    train_one_epoch(model, opt, warm, batch_size=32, normalizer=Normalizer(), engine=engine, generator=gen,
                    set_train_mode=False)
    part = data.subset(torch.arange(cfg.batch_size * steps))
    start = time.perf_counter()
    train_one_epoch(model, opt, part, batch_size=32, normalizer=Normalizer(), engine=engine, generator=gen,
                    set_train_mode=False)
    return len(part) / (time.perf_counter() - start)


def plain_steps(name: str, frozen: bool, data: ImageData, steps: int, bf16: bool) -> float:
    """img/s of the obvious PyTorch loop (fp32, or ``torch.autocast`` bf16)."""
    model, _ = _model(name, frozen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()
    x_all = data.images.float() / 255
    times = []
    for i in range(steps + 1):
        x, y = x_all[i * 32:(i + 1) * 32], data.labels[i * 32:(i + 1) * 32]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 32 * steps / sum(times[1:])


def keras_steps(python: str, name: str, frozen: bool, steps: int) -> float | None:
    """img/s of the Keras peer (None when it fails or the model has no Keras twin)."""
    if name not in KERAS:
        return None
    out = subprocess.run([python, str(ROOT / "keras_transfer_peer.py"), "--model", KERAS[name], "--mode",
                          "frozen" if frozen else "full", "--steps", str(steps)], capture_output=True, text=True)
    line = next((s for s in out.stdout.splitlines() if s.startswith("{")), None)
    if line is None:
        print(f"keras peer failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(line)["img_s"]


def part_steps(args) -> list[dict]:
    n = 32 * (args.steps + 1)
    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g),
                     torch.randint(0, CLASSES, (n,), generator=g), tuple(map(str, range(CLASSES))), "random")
    engines = {"cnnlab": lambda m, f: cnnlab_steps(m, f, data, args.steps),
               "plain fp32": lambda m, f: plain_steps(m, f, data, args.steps, False),
               "plain bf16": lambda m, f: plain_steps(m, f, data, args.steps, True)}
    if not args.no_keras:
        engines["keras"] = lambda m, f: keras_steps(args.keras_python, m, f, args.steps)
    rates: dict[tuple, list[float]] = {}
    for r in range(args.repeats):  # every variant once per round, so machine noise hits them alike
        for model in args.models:
            for frozen in (True, False):
                for engine, run in engines.items():
                    if model in args.keras_only and engine != "keras":
                        continue
                    rate = run(model, frozen)
                    if rate is not None:
                        rates.setdefault((model, frozen, engine), []).append(rate)
                        print(f"round {r + 1}: {model} {'frozen' if frozen else 'full'} {engine}: {rate:.1f} img/s",
                              flush=True)
    rows = []
    for (model, frozen, engine), values in rates.items():
        rows.append({"model": model, "mode": "frozen" if frozen else "full", "engine": engine,
                     "img_s": statistics.median(values), "runs": values})
    return rows


def _folder(root: Path, n: int) -> Path:
    from PIL import Image  # noqa: PLC0415 - only part 2 writes images

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(cls / f"{i}.jpg", quality=90)
    return root


def part_epochs(args) -> list[dict]:
    from cnnlab.runs.experiment import train  # noqa: PLC0415 - part 2 only
    from cnnlab.runs.options import experiment_config  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="transfer-speed-"))
    folder = _folder(tmp / "images", args.images)
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):
        for model in args.models:
            if model == "resnet50" and "resnet50" not in args.epoch_models:
                continue
            for mode in ("off", "auto"):
                lines: list[str] = []
                cfg = experiment_config(dataset=f"folder:{folder}", model=model, freeze="backbone",
                                        epochs=args.epochs, batch_size=32, cache_features=mode,
                                        overrides=[("data.image_size", SIZE), ("data.val_split", 0.2),
                                                   ("callbacks.checkpoint_every", "off")])
                result = train(cfg, out=tmp / f"{model}-{mode}-{r}", progress=False, log=lines.append)
                built = next((float(m.group(1)) for s in lines if (m := re.search(r"in ([\d.]+) s; each epoch", s))),
                             None)
                seconds = [h["seconds"] for h in result.history]
                runs.setdefault((model, mode), []).append({"seconds": seconds, "cache_s": built})
                print(f"round {r + 1}: {model} cache {mode}: epochs {[round(s, 2) for s in seconds]} s"
                      + (f", cache built in {built:.1f} s" if built is not None else ""), flush=True)
    rows = []
    for model in dict.fromkeys(m for m, _ in runs):
        off = statistics.median(s for run in runs[(model, "off")] for s in run["seconds"])
        head = statistics.median(s for run in runs[(model, "auto")] for s in run["seconds"][1:])
        build = statistics.median(run["cache_s"] for run in runs[(model, "auto")])
        rows.append({"model": model, "recompute_epoch_s": off, "cached_epoch_s": head, "cache_build_s": build,
                     "ratio": off / head, "runs": {k[1]: v for k, v in runs.items() if k[0] == model}})
        print(f"{model}: recomputing {off:.2f} s/epoch, head-only on the cache {head:.3f} s/epoch "
              f"({off / head:,.0f}x), cache built once in {build:.1f} s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="+", choices=("steps", "epochs"), default=["steps", "epochs"])
    ap.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "resnet50"])
    ap.add_argument("--epoch-models", nargs="+", default=["resnet18", "mobilenet_v2"],
                    help="models of part 2 (resnet50 only when listed here)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--keras-only", nargs="*", default=[], help="models of --models that only the Keras peer runs "
                    "(resnet50 on a busy machine)")
    ap.add_argument("--keras-python", default=str(Path.home() / ".cache" / "keras-peer" / "bin" / "python"))
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    result = {"load_before": load_before, "threads": torch.get_num_threads(), "args": vars(args)}
    if "steps" in args.part:
        result["steps"] = part_steps(args)
        for row in result["steps"]:
            per_gflop = row["img_s"] * GFLOPS.get(row["model"], float("nan"))
            print(f"{row['model']:<13} {row['mode']:<7} {row['engine']:<11} {row['img_s']:8.1f} img/s "
                  f"({per_gflop:.0f} forward-GFLOP/s)")
    if "epochs" in args.part:
        args.models = [m for m in args.models if m in args.epoch_models]
        result["epochs"] = part_epochs(args)
    with open("/proc/loadavg") as f:
        result["load_after"] = f.read().split()[:3]
    print(f"load average before {' '.join(load_before)}, after {' '.join(result['load_after'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
