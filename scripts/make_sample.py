"""Builds the bundled ``fashion-mnist-sample``: a stratified real subset of the official Fashion-MNIST files.

Usage: python scripts/make_sample.py [--data-dir DIR] [--train-per-class 600] [--test-per-class 100]

Takes the first N images of each class in the official order (deterministic, no randomness), keeps the
official order among the chosen ones, writes IDX files gzipped without timestamps (byte-reproducible) into
src/cnnlab/data/samples/fashion-mnist-sample/, and records their sha256 in checksums.json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from cnnlab.data.datasets import DATASETS, locate
from cnnlab.data.idx import read_idx

OUT = Path(__file__).resolve().parents[1] / "src/cnnlab/data/samples/fashion-mnist-sample"


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)])
    return np.sort(keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    src = locate("fashion-mnist", args.data_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    sizes = []
    for prefix, n in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        x = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        keep = first_per_class(y, n)
        sizes.append(len(keep))
        for kind, arr in (("images-idx3", x[keep]), ("labels-idx1", y[keep])):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.compress(idx_bytes(arr), compresslevel=9, mtime=0)
            (OUT / name).write_bytes(data)
            files[name] = [hashlib.sha256(data).hexdigest(), len(data)]
    info = DATASETS.get("fashion-mnist")
    meta = {
        "description": f"Bundled real subset of Fashion-MNIST: first {args.train_per_class}/class train "
                       f"({sizes[0]}) and {args.test_per_class}/class test ({sizes[1]}), for offline demos",
        "classes": list(info.classes), "shape": list(info.shape), "sizes": sizes,
        "homepage": info.homepage, "files": files,
        "made_by": "scripts/make_sample.py from the official Fashion-MNIST files",
    }
    (OUT / "checksums.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(s for _, s in files.values())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB): {sizes[0]} train / {sizes[1]} test")


if __name__ == "__main__":
    main()
