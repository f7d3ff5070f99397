"""Fault injection: a 3-epoch fp32 training of the first tutorial's CNN on the bundled Fashion-MNIST sample,
SIGKILLed at random moments (some deliberately inside checkpoint writes) and resumed after each kill.

Each *trial* trains one run from scratch through ``cnnlab train`` in a subprocess, kills it, resumes it with
``cnnlab train --resume`` (or starts it again when the kill came before its first checkpoint), and so on
until it finishes; trials repeat until ``--kills`` kills have been delivered. Every finished trial is checked
against one uninterrupted run of the same config: epochs recorded exactly 1..3, and ``model.safetensors``
bit-identical. After every kill, each checkpoint the run holds (last, previous, best) is checked against its
digest. Work lost per kill is the training time between the last checkpoint (or the process's start of
training, if later) and the kill.

Kinds of kill: ``random`` (a uniform moment 0..``--window`` s after the process started training, or during
its start-up) and ``in-write`` (the moment a checkpoint's temporary folder appears).

Usage: python benchmarks/faults.py [--kills 25] [--seed 0] [--every 10steps] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cnnlab.training.checkpoint import DIGEST_FILE, check_checkpoint

TRAIN = ["--config", "fashion_mnist_cnn", "--dataset", "fashion-mnist-sample", "--epochs", "3",
         "--precision", "fp32", "--no-progress", "--set", "train.threads=1"]


class Proc:
    """A ``cnnlab train`` subprocess whose output lines are stamped with the time they arrived."""

    def __init__(self, argv: list[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self.p = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def training_since(self) -> float | None:
        """When this process started training (its model line), or None."""
        return next((t for t, line in self.lines if line.startswith("Model:")), None)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def _temps(ckpts: Path) -> set[str]:
    """Checkpoint folders being written (``.NAME.XXXX.tmp``) or swapped (``.NAME.old``)."""
    try:
        return {p.name for p in ckpts.iterdir() if p.name.endswith((".tmp", ".old"))}
    except OSError:
        return set()


def _in_write(ckpts: Path, stale: set[str]) -> bool:
    return bool(_temps(ckpts) - stale)


def _unreadable(run: Path) -> list[str]:
    """Checkpoints of ``run`` that exist but fail their digest (a half-swapped ``.NAME.old`` counts as NAME)."""
    bad = []
    for name in ("last", "previous", "best"):
        folder = run / "checkpoints" / name
        if not folder.exists():
            folder = run / "checkpoints" / f".{name}.old"
        if folder.exists() and (problem := check_checkpoint(folder)) is not None:
            bad.append(f"{name}: {problem}")
    return bad


def _status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _kill(proc: Proc, run: Path, kind: str, window: float, rng: random.Random) -> tuple[float, str]:
    """Kills ``proc`` as ``kind`` says; returns (kill time, what it interrupted)."""
    deadline = time.time() + 120
    stale = _temps(run / "checkpoints")  # left by an earlier kill (a resume removes them)
    if kind == "in-write":
        while proc.p.poll() is None and not _in_write(run / "checkpoints", stale) and time.time() < deadline:
            time.sleep(0.0005)
    else:
        start, delay = time.time(), rng.uniform(0, window)
        startup = rng.random() < 0.1  # now and then during start-up (imports, data), before any training
        while proc.p.poll() is None and time.time() < deadline:
            since = proc.training_since()
            if startup and time.time() - start > delay:
                break
            if not startup and since is not None and time.time() >= since + delay:
                break
            time.sleep(0.001)
    if proc.p.poll() is not None:
        return time.time(), "finished"
    what = "in-write" if _in_write(run / "checkpoints", stale) else ("start-up" if proc.training_since() is None else "training")
    proc.p.send_signal(signal.SIGKILL)
    t = time.time()
    proc.p.wait()
    proc.reader.join(5)
    return t, what


def _lost(proc: Proc, run: Path, killed_at: float) -> float:
    """Seconds of training this process did that no checkpoint holds."""
    since = proc.training_since()
    if since is None:
        return 0.0
    digest = run / "checkpoints" / "last" / DIGEST_FILE
    saved = digest.stat().st_mtime if digest.is_file() else 0.0
    return max(0.0, killed_at - max(since, saved))


def trial(run: Path, every: str, kills_left: int, window: float, rng: random.Random, stats: dict) -> None:
    """One run trained to the end through kills; appends to ``stats``."""
    fresh = [*TRAIN, "--set", f"callbacks.checkpoint_every={every}", "--out", str(run)]
    argv = fresh
    while True:
        proc = Proc(argv)
        if kills_left <= 0:
            break
        kind = "in-write" if rng.random() < 1 / 3 else "random"
        t, what = _kill(proc, run, kind, window, rng)
        if what == "finished":
            break
        kills_left -= 1
        stats["kills"].append({"kind": kind, "hit": what, "lost_s": round(_lost(proc, run, t), 3)})
        stats["unreadable"] += _unreadable(run)
        stats["fallbacks"] += proc.text().count("is not usable")
        if _status(run) == "done":  # killed on its way out, after the run was complete: nothing to resume
            stats["kills"][-1]["hit"] = "exit"
            proc = None
            break
        has_checkpoint = any((run / "checkpoints" / n).exists() for n in ("last", ".last.old", "previous"))
        argv = ["--resume", str(run), "--no-progress"] if has_checkpoint else [*fresh, "--overwrite"]
    rc = 0
    if proc is not None:
        rc = proc.p.wait()
        proc.reader.join(5)
        stats["fallbacks"] += proc.text().count("is not usable")
        if rc != 0:
            print(proc.text(), file=sys.stderr)
    stats["trials"].append({"rc": rc, "epochs": [json.loads(x)["epoch"] for x in
                                                                (run / "metrics.jsonl").read_text().splitlines()]
                            if (run / "metrics.jsonl").is_file() else [], "run": str(run)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", default="10steps", help="callbacks.checkpoint_every of the runs")
    ap.add_argument("--window", type=float, default=2.0, help="random kills: up to this many s into training")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the runs (in a temporary folder)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="cnnlab-faults-"))
    t0 = time.time()
    ref = root / "reference"
    clean = Proc([*TRAIN, "--set", f"callbacks.checkpoint_every={args.every}", "--out", str(ref)])
    clean.p.wait()
    clean.reader.join(5)
    assert clean.p.returncode == 0, clean.text()
    reference = (ref / "model.safetensors").read_bytes()
    stats: dict = {"kills": [], "unreadable": [], "fallbacks": 0, "trials": []}
    while len(stats["kills"]) < args.kills:
        before = len(stats["kills"])
        run = root / f"trial{len(stats['trials']) + 1}"
        trial(run, args.every, args.kills - before, args.window, rng, stats)
        stats["trials"][-1]["identical"] = (run / "model.safetensors").is_file() and \
            (run / "model.safetensors").read_bytes() == reference
        stats["trials"][-1]["kills"] = len(stats["kills"]) - before
    lost = [k["lost_s"] for k in stats["kills"]]
    summary = {
        "kills": len(stats["kills"]),
        "kills_by_moment": {h: sum(k["hit"] == h for k in stats["kills"]) for h in ("start-up", "training", "in-write", "exit")},
        "trials": len(stats["trials"]),
        "trials_finished": sum(t["rc"] == 0 for t in stats["trials"]),
        "epochs_exactly_1_3": sum(t["epochs"] == [1, 2, 3] for t in stats["trials"]),
        "weights_identical": sum(bool(t.get("identical")) for t in stats["trials"]),
        "unreadable_checkpoints": len(stats["unreadable"]),
        "fallbacks_to_previous": stats["fallbacks"],
        "lost_s_median": round(statistics.median(lost), 3) if lost else 0.0,
        "lost_s_max": round(max(lost), 3) if lost else 0.0,
        "checkpoint_every": args.every,
        "seed": args.seed,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary, indent=1))
    if stats["unreadable"]:
        print("unreadable:", stats["unreadable"], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, **stats}, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
