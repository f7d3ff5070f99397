"""A/B of two source trees of cnnlab: one epoch of the tutorial CNN through ``cnnlab train``, runs alternated.

Each run is a fresh process that imports cnnlab from the given ``src`` folder (e.g. a ``git worktree`` of an
older commit beside the working tree) and trains ``configs/fashion_mnist_cnn.yaml`` for one epoch on the full
Fashion-MNIST. Reports the epoch's img/s (60,000 / its ``seconds`` in metrics.jsonl) and the process wall time,
medians over the runs, and B/A.

Usage: python benchmarks/ab_trees.py OLD_SRC NEW_SRC [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from cnnlab.cli import main
rc = main(["train", "--config", sys.argv[1] + "/cnnlab/configs/fashion_mnist_cnn.yaml", "--epochs", "1",
           "--no-progress", "--out", sys.argv[2]])
sys.exit(rc)
"""


def one_run(src: str) -> tuple[float, float]:
    """(epoch img/s, process wall seconds) of one fresh process on ``src``."""
    out = Path(tempfile.mkdtemp(prefix="cnnlab-ab-")) / "run"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", ONE_RUN, src, str(out)], check=True, capture_output=True)
    wall = time.perf_counter() - t0
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    return 60000 / epoch["seconds"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="src folder of tree A (the baseline)")
    ap.add_argument("b", help="src folder of tree B")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    for i in range(args.runs):  # alternate, so machine drift hits both alike
        for key in ("a", "b"):
            results[key].append(one_run(getattr(args, key)))
            img_s, wall = results[key][-1]
            print(f"run {i + 1} {key}: {img_s:,.0f} img/s, {wall:.2f} s wall", flush=True)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in results.items()}
    print(f"\nA {args.a}: {med['a'][0]:,.0f} img/s, {med['a'][1]:.2f} s wall (medians of {args.runs})")
    print(f"B {args.b}: {med['b'][0]:,.0f} img/s, {med['b'][1]:.2f} s wall")
    print(f"B/A: img/s {med['b'][0] / med['a'][0]:.3f}, wall {med['b'][1] / med['a'][1]:.3f}")


if __name__ == "__main__":
    main()
