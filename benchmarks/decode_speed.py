"""Decode + resize throughput of folder loading (the Kaggle cats-vs-dogs case: 500×375 JPEGs).

Generates N photo-like 500×375 JPEGs (smooth colour fields, gradients and fine grain, quality 90; ~37 KiB
each, a little bigger than the Kaggle files, ~22 KiB, so this errs on the slow side) in a
temporary folder, then times a cold ``load_folder`` (list, decode, resize, write the cache) at each size
with the process pool, and the warm load from the cache.

    .venv/bin/python benchmarks/decode_speed.py [--n 2000] [--sizes 50 224] [--workers N] [--grayscale]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int, seed: int = 0) -> int:
    """Writes ``n`` photo-like 500×375 JPEGs named ``cat.<i>.jpg`` / ``dog.<i>.jpg``; returns total bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    # sensor-like grain (std 3 levels): one big tile, a random window of it per image (fast to make)
    grain = rng.standard_normal((375 + 64, 500 + 64, 1), dtype=np.float32) * 3
    for i in range(n):
        # low-frequency colour field (an 8×6 grid upsampled) + a gradient + grain, like a photo
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375),
                                                                                         Image.Resampling.BICUBIC)
        angle = rng.uniform(0, 2 * np.pi)
        grad = (np.cos(angle) * xx + np.sin(angle) * yy) * (60 / 625)
        dy, dx = rng.integers(0, 64, 2)
        arr = np.asarray(field, np.float32) + grad[..., None] + grain[dy:dy + 375, dx:dx + 500]
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        path = folder / f"{'cat' if i % 2 else 'dog'}.{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        total += path.stat().st_size
    return total


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the decode workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of JPEGs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 224], help="target sizes (square)")
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: all cores)")
    parser.add_argument("--grayscale", action="store_true", help="decode to one channel")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        os.environ["CNNLAB_CACHE"] = str(tmp_path / "cache")  # a fresh cache: every first load decodes
        from cnnlab.data.cache import cores
        from cnnlab.data.folder import load_folder
        from cnnlab.data.listing import FolderSpec

        images = tmp_path / "images"
        images.mkdir()
        t0 = time.perf_counter()
        size = make_jpegs(images, args.n)
        print(f"generated {args.n} 500×375 JPEGs (q90, {size / args.n / 1024:.0f} KiB avg) in "
              f"{time.perf_counter() - t0:.1f} s; workers: {args.workers or cores()} of {cores()} cores")
        for side in args.sizes:
            spec = FolderSpec(images, image_size=side, grayscale=args.grayscale)
            t0, cpu0 = time.perf_counter(), _cpu_seconds()
            ds = load_folder(spec, workers=args.workers, progress=False)
            cold, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            t0 = time.perf_counter()
            load_folder(spec, workers=args.workers, progress=False)
            warm = time.perf_counter() - t0
            c, h, w = ds.data.shape
            print(f"{side:>4}px ({c}×{h}×{w}): cold load {cold:6.2f} s = {args.n / cold:6.0f} img/s "
                  f"(decode alone {args.n / ds.report.decode_seconds:6.0f} img/s); cached load {warm * 1e3:.0f} ms")
            # CPU time does not depend on what else the machine runs: it gives the idle-machine rate
            print(f"      CPU time {cpu:.2f} s = {args.n / cpu:.0f} img per CPU-second "
                  f"(≈ {args.n / cpu * (args.workers or cores()):.0f} img/s on {args.workers or cores()} idle cores); "
                  f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
