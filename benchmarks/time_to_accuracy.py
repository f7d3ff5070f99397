"""Wall-clock time to a test accuracy: runs `cnnlab train` on configs and reports seconds and accuracy.

Each run is a fresh process (`python -m cnnlab train --config X`), timed from launch to exit, so the time
includes Python start-up, data loading, training, evaluation and writing the run directory. With several
configs and ``--repeats``, the configs take turns.

Usage: python benchmarks/time_to_accuracy.py CONFIG[:TARGET[:BUDGET_S]] ... [--repeats N] [--json FILE]
  e.g. configs/fast/fashion_mnist_cnn.yaml:0.905:15 configs/fast/mnist.yaml:0.99:10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(config: str, extra: list[str]) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--config", config, "--out", str(out),
                               "--no-progress", *extra], capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{config} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        results = json.loads((out / "results.json").read_text())
        epochs = json.loads((out / "run.json").read_text())["epochs"]
        return wall, results["test_acc"], epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="CONFIG[:TARGET[:BUDGET_S]]")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    specs = []
    for spec in args.runs:
        config, *rest = spec.split(":")
        specs.append((config, float(rest[0]) if rest else None, float(rest[1]) if len(rest) > 1 else None))
    extra = [a for o in args.overrides for a in ("--set", o)]
    results: dict[str, tuple[list[float], list[float]]] = {config: ([], []) for config, _, _ in specs}
    for _ in range(args.repeats):  # the configs take turns, so a load burst hits them alike
        for config, _, _ in specs:
            wall, acc, epochs = run_once(config, extra)
            results[config][0].append(wall)
            results[config][1].append(acc)
            print(f"{config}: {acc:.4f} test accuracy in {wall:.1f} s ({epochs} epochs)", flush=True)
    rows = []
    for config, target, budget in specs:
        walls, accs = results[config]
        row = {"config": config, "median_s": statistics.median(walls), "median_acc": statistics.median(accs),
               "walls": walls, "accs": accs, "target": target, "budget_s": budget}
        row["met"] = (target is None or row["median_acc"] >= target) and (budget is None or row["median_s"] <= budget)
        rows.append(row)
    print("\n| config | test acc (median) | wall s (median) | target | budget s | met |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_acc']:.4f} | {r['median_s']:.1f} | {r['target'] or '-'} | "
              f"{r['budget_s'] or '-'} | {'yes' if r['met'] else 'no'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
