"""Every shipped tutorial config against its tutorial's published figure, on the full data (docs/seeds.md).

    python benchmarks/seeds.py run OUT [NAME ...]     train each config (all by default) into OUT/NAME, timed
    python benchmarks/seeds.py table OUT              the Markdown table of what OUT holds
    python benchmarks/seeds.py standin FOLDER [N]     a stand-in for Kaggle's dogs-vs-cats train folder: N cat and
                                                      N dog photos of CIFAR-10 (train batches) as FOLDER/cat.I.jpg,
                                                      dog.I.jpg (default 500 each)

``run OUT NAME ... -- ARGS`` passes ARGS on to each ``cnnlab train`` (e.g. ``--set data.dataset=folder:X``).

``run`` launches ``cnnlab train --config NAME --out OUT/NAME --no-progress`` one config after another and
appends the wall time of each (launch to exit, with the load average at the end) to OUT/walltimes.txt;
``table`` reads each run's results.json / run.json and those times. Data: $CNNLAB_DATA (the official files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# config -> (the tutorial's own figure as a fraction, what it is, where the tutorial says it)
TUTORIAL = {
    "fashion_mnist_dnn": (0.8808, "test acc", "tutorial 1, first listing: test 'acc: 0.8808'"),
    "fashion_mnist_cnn_keras": (0.9047, "test acc", "tutorial 1, CNN: test 'acc: 0.9047'"),
    "fashion_mnist_cnn": (0.9047, "test acc", "tutorial 1's CNN (cnnlab's 3-epoch recipe of it, make demo)"),
    "fashion_mnist_cnn32": (None, "", "tutorial 1's Conv32 walk-through prints no result"),
    "fashion_mnist_cnn_linear64": (0.9006, "test acc", "tutorial 4: test accuracy 0.9006"),
    "mnist_cnn32x1": (0.9873, "test acc", "tutorial 1, exercise code: test 'acc: 0.9873'"),
    "mnist_cnn64k5": (0.9890, "val = test acc", "tutorial 2, Keras CNN 5x5: 'val_acc: 0.9890'"),
    "mnist_cnn_dropout": (0.9906, "val = test acc", "tutorial 2, first Keras CNN: 'val_acc: 0.9906'"),
    "mnist_fc1024_sgd_l2": (0.920, "test acc", "tutorial 2, TF FC net: 'Test accuracy: 92.0%'"),
    "mnist_fc200_dropout": (0.9826, "val = test acc", "tutorial 2, Keras FC net: 'val_acc: 0.9826'"),
    "cifar10_basic": (0.80, "test acc, 'about'", "tutorial 3: 'an accuracy of about 80%'"),
    "cifar10_improved": (0.85, "test acc, 'about'", "tutorial 3: 'about 85% in 50 iterations'"),
    "cats_dogs_vgg16": (0.7838, "val acc", "tutorial 2, VGG-16 on Kaggle's dogs-vs-cats: 'val_acc: 0.7838'"),
}
FAST = [n for n in TUTORIAL if not n.startswith(("cifar10", "cats_dogs"))]


def run(out: Path, names: list[str], extra: list[str] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        t0 = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.call([sys.executable, "-m", "cnnlab", "train", "--config", name, "--out", str(out / name),
                                  "--no-progress", *extra], stdout=log, stderr=subprocess.STDOUT)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
        with open(out / "walltimes.txt", "a") as f:
            f.write(f"{name} rc={rc} wall={time.perf_counter() - t0:.1f} load={load}\n")


def standin(folder: Path, per_class: int = 500) -> None:
    """Kaggle's naming (``cat.0.jpg``, ``dog.0.jpg``) over CIFAR-10's cat (3) and dog (5) training photos, 32x32
    JPEGs (quality 95): real cats and dogs, so the config's whole path runs (filename labels, resizing to 50x50,
    VGG-16) while Kaggle's 25,000 photos are absent. Its accuracy says nothing about the tutorial's figure."""
    from PIL import Image

    from cnnlab.data.cifar import read_batch
    from cnnlab.data.datasets import locate

    root = locate("cifar-10", download=False)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {3: 0, 5: 0}
    for i in range(1, 6):
        batch = read_batch(next(root.rglob(f"data_batch_{i}")))
        for pixels, label in zip(batch[b"data"], batch[b"labels"], strict=True):
            if label in counts and counts[label] < per_class:
                name = f"{'cat' if label == 3 else 'dog'}.{counts[label]}.jpg"
                Image.fromarray(pixels.reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / name, quality=95)
                counts[label] += 1
        if min(counts.values()) >= per_class:
            break


def walltimes(out: Path) -> dict[str, tuple[float, str]]:
    times = {}
    path = out / "walltimes.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rest = line.split(" ", 1)
        fields = dict(f.split("=", 1) for f in rest.split(" ", 3)[:3] if "=" in f)
        times[name] = (float(fields["wall"]), rest.split("load=", 1)[-1])
    return times


def table(out: Path) -> str:
    times = walltimes(out)
    rows = ["| config | tutorial | cnnlab | difference | epochs | wall time | command |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, (figure, what, _) in TUTORIAL.items():
        run_dir = out / name
        meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        res = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else None
        epochs = sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()) \
            if (run_dir / "metrics.jsonl").is_file() else 0
        ours = f"{100 * res['test_acc']:.2f}%" if res else f"(not finished: {epochs} epochs)"
        diff = f"{100 * (res['test_acc'] - figure):+.2f}" if res and figure is not None else ""
        tut = f"{100 * figure:.2f}% ({what})" if figure is not None else "—"
        wall = f"{times[name][0]:,.0f} s" if name in times else ""
        rows.append(f"| `{name}` | {tut} | {ours} | {diff} | {epochs}/{meta.get('epochs_planned', '?')} | {wall} | "
                    f"`cnnlab train --config {name}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "table", "standin"):
        sys.exit(__doc__)
    target = Path(sys.argv[2])
    if sys.argv[1] == "run":
        args = sys.argv[3:]
        cut = args.index("--") if "--" in args else len(args)
        run(target, args[:cut] or FAST, args[cut + 1:])
    elif sys.argv[1] == "standin":
        standin(target, int(sys.argv[3]) if len(sys.argv) > 3 else 500)
    else:
        print(table(target))
    os._exit(0)
