"""Start-up time of cnnlab commands, A/B between source trees, runs alternating (a small hyperfine).

Each round runs every command once under every tree (``PYTHONPATH=TREE/src``), in turn, so a load change
on a shared machine hits both sides alike; the median and min wall seconds per (command, tree) are printed,
with the load average before and after:

    .venv/bin/python benchmarks/startup.py --tree before=/work/main --tree after=. [--rounds 5]
        [--command "models" --command "summary cnn_64x2" ...]

Commands are cnnlab arguments (split on spaces). ``data:NAME`` instead times only loading a registered
dataset (``load_dataset(NAME)`` after importing torch), which isolates the IDX decode (or its cache).
A ``train`` command also reports the seconds from launch to the end of its first optimiser step (a global
step post-hook prints the clock; the hook needs ``torch.optim`` imported before cnnlab's CLI starts, which
``train`` imports anyway, and fires after ``step`` returns, so whatever the first step imports is counted).
The cache ($CNNLAB_CACHE) is one scratch folder per tree, warmed by one untimed run of each command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = ["--help", "models", "summary cnn_64x2", "data:mnist"]
FIRST_STEP_SNIPPET = """
import sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
from cnnlab.cli import entry
seen = []
def first_step(optimizer, args, kwargs):
    if not seen:
        seen.append(time.time())
        print(f"FIRST_STEP_AT {seen[0]:.6f}", file=sys.stderr, flush=True)
register_optimizer_step_post_hook(first_step)
sys.argv[0] = "cnnlab"
entry()
"""
DATA_SNIPPET = ("import sys, time, torch; from cnnlab.data.datasets import load_dataset; t = time.perf_counter(); "
                "load_dataset(sys.argv[1]); print(time.perf_counter() - t)")


def argv_of(command: str) -> list[str]:
    if command.startswith("data:"):
        return [sys.executable, "-c", DATA_SNIPPET, command[5:]]
    if command.split()[0] == "train":
        return [sys.executable, "-c", FIRST_STEP_SNIPPET, *command.split()]
    return [sys.executable, "-m", "cnnlab", *command.split()]


def run_once(command: str, tree: Path, cache: Path) -> tuple[float, float | None]:
    """Wall seconds of one run (for ``data:``, the in-process seconds of the load alone) and, for ``train``,
    the seconds from launch to the end of the first optimiser step."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "CNNLAB_CACHE": str(cache)}
    launched, t0 = time.time(), time.perf_counter()
    done = subprocess.run(argv_of(command), env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{command!r} under {tree} failed ({done.returncode}): {done.stderr[-400:]}")
    if command.startswith("data:"):
        return float(done.stdout.split()[-1]), None
    stamps = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("FIRST_STEP_AT ")]
    return wall, (float(stamps[0]) - launched if stamps else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH", help="a source tree (repeatable)")
    ap.add_argument("--command", action="append", help=f"cnnlab arguments (default: {DEFAULT})")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    commands = args.command or DEFAULT
    with tempfile.TemporaryDirectory(prefix="cnnlab-startup-") as scratch:
        caches = {name: Path(scratch) / name for name in trees}
        for c in commands:  # warm-up: page cache, .pyc files, the dataset cache
            for name, tree in trees.items():
                run_once(c, tree, caches[name])
        load0 = os.getloadavg()
        times: dict[tuple[str, str], list[float]] = {(c, n): [] for c in commands for n in trees}
        firsts: dict[tuple[str, str], list[float]] = {(c, n): [] for c in commands for n in trees}
        for _ in range(args.rounds):
            for c in commands:
                for name, tree in trees.items():
                    wall, first = run_once(c, tree, caches[name])
                    times[c, name].append(wall)
                    if first is not None:
                        firsts[c, name].append(first)
        load1 = os.getloadavg()
    print(f"{args.rounds} alternating rounds; load average {load0[0]:.1f} before, {load1[0]:.1f} after; "
          f"seconds (data: the load call alone; first step: launch to the end of the first optimiser step)")
    print(f"  {'command':<22}" + "".join(f"{n + ' median':>16}{n + ' min':>12}" for n in trees)
          + ("    ratio" if len(trees) == 2 else ""))
    for c in commands:
        for label, table in (("", times), ("  first step", firsts)):
            if not all(table[c, n] for n in trees):
                continue
            meds = [statistics.median(table[c, n]) for n in trees]
            row = "".join(f"{m:>16.3f}{min(table[c, n]):>12.3f}" for m, n in zip(meds, trees, strict=True))
            print(f"  {(label or c):<22}{row}" + (f"{meds[1] / meds[0]:>9.2f}" if len(trees) == 2 else ""))
        for n in trees:
            print(f"    {n}: " + " ".join(f"{t:.2f}" for t in times[c, n])
                  + ("; first step " + " ".join(f"{t:.2f}" for t in firsts[c, n]) if firsts[c, n] else ""))


if __name__ == "__main__":
    main()
