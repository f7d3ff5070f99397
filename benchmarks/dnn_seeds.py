"""Tutorial 1's Fashion-MNIST DNN (Flatten-Dense128-Dense10, Adam, batch 32, 5 epochs) over several seeds, in
cnnlab (``configs/fashion_mnist_dnn.yaml``) and in Keras (the peer venv of ../shared/peers/keras_seed.sh), runs
alternating, so that the gap to the tutorial's single figure (test acc 0.8808) can be told from seed noise.

    python benchmarks/dnn_seeds.py [--seeds 0 1 2] [--out docs/results/dnn_seeds.json]

Data: $CNNLAB_DATA/fashion-mnist (the official IDX files). The Keras side runs this same file with the peer's
Python (``--keras SEED``); the peer venv is made by keras_seed.sh (TensorFlow CPU, once).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PEER = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keras-peer" / "bin" / "python"


def _idx(path: Path):
    import numpy as np

    with gzip.open(path) as f:
        data = f.read()
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)


def keras_run(root: Path, seed: int) -> float:
    """The tutorial's listing in Keras, seeded; returns the test accuracy (runs inside the peer venv)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    xtr, ytr = _idx(root / "train-images-idx3-ubyte.gz") / 255.0, _idx(root / "train-labels-idx1-ubyte.gz")
    xte, yte = _idx(root / "t10k-images-idx3-ubyte.gz") / 255.0, _idx(root / "t10k-labels-idx1-ubyte.gz")
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    m = tf.keras.models.Sequential([layers.Input((28, 28)), layers.Flatten(), layers.Dense(128, activation="relu"),
                                    layers.Dense(10, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=5, batch_size=32, verbose=0)
    return float(m.evaluate(xte, yte, verbose=0)[1])


def cnnlab_run(seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "--config", "fashion_mnist_dnn", "--out",
                        f"{tmp}/r", "--set", f"train.seed={seed}", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        return float(json.loads(Path(f"{tmp}/r/results.json").read_text())["test_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keras", type=int, default=None, help=argparse.SUPPRESS)  # the peer side
    args = parser.parse_args()
    root = Path(os.environ.get("CNNLAB_DATA", "../shared/datasets")) / "fashion-mnist"
    if args.keras is not None:
        print(keras_run(root, args.keras))
        return
    if not PEER.exists():
        sys.exit(f"no Keras peer at {PEER}: run ../shared/peers/keras_seed.sh once")
    rows = []
    for seed in args.seeds:  # alternate, so that a change in machine load hits both alike
        ours = cnnlab_run(seed)
        peer = float(subprocess.run([str(PEER), __file__, "--keras", str(seed)], check=True, capture_output=True,
                                    text=True).stdout.split()[-1])
        rows.append({"seed": seed, "cnnlab": ours, "keras": peer})
        print(f"seed {seed}: cnnlab {ours:.4f}  keras {peer:.4f}", flush=True)
    summary = {k: {"mean": statistics.mean(r[k] for r in rows), "min": min(r[k] for r in rows),
                   "max": max(r[k] for r in rows)} for k in ("cnnlab", "keras")}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"command": "python benchmarks/dnn_seeds.py " + " ".join(sys.argv[1:]),
                                        "tutorial": 0.8808, "runs": rows, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
