"""Folders of image files as datasets: labels from subfolders, file names or a CSV; a decoded cache.

The first load decodes every file once, in parallel over all cores, to the target size, into a uint8
``(N, C, H, W)`` file under ``cache_dir()/folders/<key>/`` (``images.u8`` + ``labels.npy`` +
``meta.json``). Later loads map that file (``numpy.memmap`` → ``torch.from_numpy``, no copy) and are
near-instant; a folder bigger than RAM then streams through the OS page cache. The key hashes the
options and every file's path, label, size and mtime, so changing either builds a new cache (and removes
the stale one for the same folder and options). The cache is built in a temporary folder and renamed
into place, so an interrupted build never looks complete.

Files that cannot be used (empty, corrupt, truncated, decompression bombs, unlabelled) are skipped and
listed with a reason in the report; files that are not images are counted and named in one line (see
:mod:`cnnlab.data.imagefiles`); neither ever stops a load. Which files and labels a folder holds is
:mod:`cnnlab.data.listing`; a header-only look before training is :mod:`cnnlab.data.inspection`. Class imbalance is flagged when
the largest class has more than ``IMBALANCE_RATIO`` (1.5) times the images of the smallest: accuracy
then rewards the majority class, so look at per-class metrics or balance the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab.data import cache
from cnnlab.data.decode import pixel_limit
from cnnlab.data.imagefiles import not_images_line
from cnnlab.data.listing import DEFAULT_PATTERN, FolderSpec, Listing, collect
from cnnlab.data.tensors import ImageData
from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir

IMBALANCE_RATIO = 1.5  # largest / smallest class count above which a folder is flagged as imbalanced


def _imbalance(counts: dict[str, int]) -> float:
    """Largest over smallest class count (1 = balanced; inf when a class is empty)."""
    low = min(counts.values(), default=1)
    return max(counts.values(), default=1) / low if low else float("inf")


@dataclass(frozen=True)
class FolderSummary:
    """Fields and screen lines shared by :class:`FolderReport` and the header-only ``FolderInspection``.

    Attributes:
        source: the folder.
        labels: how labels were read (subfolders, filename or csv).
        counts: images per class, in class order.
        skipped: (relative path, reason) of images left out (unlabelled; in a report also unreadable).
        not_images: relative paths of the files that are not images (skipped for their type).
    """

    source: str
    labels: str
    counts: dict[str, int]
    skipped: tuple[tuple[str, str], ...]
    not_images: tuple[str, ...]

    @property
    def imbalance(self) -> float:
        """Largest over smallest class count (1 = balanced)."""
        return _imbalance(self.counts)

    @property
    def imbalanced(self) -> bool:
        """Whether :attr:`imbalance` exceeds ``IMBALANCE_RATIO``."""
        return self.imbalance > IMBALANCE_RATIO

    def _class_lines(self) -> list[str]:
        total = sum(self.counts.values()) or 1
        lines = ["images per class:"] + [f"  {name:<20} {n:>8}  {100 * n / total:5.1f}%"
                                         for name, n in self.counts.items()]
        if self.imbalanced:
            lines.append(f"  imbalanced: largest/smallest class = {self.imbalance:.2f} (> {IMBALANCE_RATIO}); "
                         "accuracy favours the majority class — check per-class metrics or balance the data")
        return lines

    @staticmethod
    def _file_lines(title: str, files: tuple[tuple[str, str], ...], show: int = 10) -> list[str]:
        lines = [f"{title} {len(files)} file(s):"] + [f"  {p}: {why}" for p, why in files[:show]]
        if len(files) > show:
            lines.append(f"  … and {len(files) - show} more (see the JSON report)")
        return lines if files else []

    def _not_images_lines(self) -> list[str]:
        line = not_images_line(self.not_images)
        return [line] if line else []

    def _base_dict(self) -> dict[str, Any]:
        return {"source": self.source, "labels": self.labels, "images": sum(self.counts.values()),
                "counts": dict(self.counts), "imbalance": self.imbalance, "imbalanced": self.imbalanced,
                "skipped": [{"file": p, "reason": r} for p, r in self.skipped], "not_images": list(self.not_images)}


@dataclass(frozen=True)
class FolderReport(FolderSummary):
    """What a folder load found and did (the fields of :class:`FolderSummary`, and these).

    Attributes:
        shape: (C, H, W) of the decoded images.
        cache: the cache folder.
        from_cache: True when no file was decoded on this load.
        seconds: time this load took.
        decode_seconds: time the decode that built the cache took.
    """

    shape: tuple[int, int, int]
    cache: str
    from_cache: bool
    seconds: float
    decode_seconds: float

    def to_lines(self) -> list[str]:
        """A short human summary for the screen."""
        n = sum(self.counts.values())
        how = (f"from cache in {self.seconds:.2f} s" if self.from_cache else
               f"decoded in {self.decode_seconds:.1f} s ({n / max(self.decode_seconds, 1e-9):.0f} img/s)")
        head = (f"{self.source}: {n} images, {len(self.counts)} classes (labels from {self.labels}), "
                f"{'×'.join(map(str, self.shape))}, {how}")
        return [head, *self._class_lines(), *self._file_lines("skipped", self.skipped), *self._not_images_lines()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (for a run directory)."""
        return {**self._base_dict(), "shape": list(self.shape), "cache": self.cache, "from_cache": self.from_cache,
                "seconds": round(self.seconds, 3), "decode_seconds": round(self.decode_seconds, 3)}


@dataclass(frozen=True)
class FolderDataset:
    """A loaded folder.

    Attributes:
        data: the images (a view of the cache file) and labels.
        report: counts, skipped files, imbalance, timing.
        files: relative path of each image, in row order.
    """

    data: ImageData
    report: FolderReport
    files: tuple[str, ...]


def load_folder(spec: FolderSpec, *, workers: int | None = None, progress: bool = True) -> FolderDataset:
    """Loads a folder of images, decoding into the cache only when the files or options changed.

    Args:
        spec: the folder and options.
        workers: decode processes; None uses every available core.
        progress: show progress while decoding (a bar on a terminal, plain lines otherwise).

    Raises:
        CnnlabError: the folder, CSV or options are wrong, or fewer than two classes have usable images.
    """
    start = time.perf_counter()
    if workers is not None and workers < 1:
        raise CnnlabError(f"workers={workers}; use 1 or more decode processes (or leave it unset)")
    listing = collect(spec)
    if not listing.items:
        raise CnnlabError(_nothing_to_load(spec, listing))
    limit = pixel_limit(spec.max_pixels)
    key, opt_key = _cache_key(spec, listing, limit)
    root = cache_dir() / "folders"
    final = root / key
    meta = cache.read_cache_meta(final)
    if meta is None:
        info = {"source": str(listing.root), "labels": listing.mode, "pattern": spec.pattern,
                "csv": str(listing.csv) if listing.csv else None}
        meta = cache.build_cache(final, listing.root, listing.items, spec.size, spec.grayscale, spec.resize,
                                 workers=workers or cache.cores(), progress=progress, limit=limit,
                                 skipped=listing.skipped, info=info)
        for stale in root.glob(f"{opt_key}-*"):  # older builds of the same folder and options
            if stale != final:
                shutil.rmtree(stale, ignore_errors=True)
        from_cache = False
    else:
        from_cache = True
    classes = tuple(meta["classes"])
    if len(classes) < 2:
        raise CnnlabError(f"{spec.path}: found {len(classes)} class(es) {list(classes)} (labels from "
                          f"{listing.mode}); a classifier needs two or more — check labels/pattern/csv")
    images, labels = cache.open_cache(final, meta)
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, f"folder:{spec.path}")
    counts = dict(zip(classes, data.class_counts(), strict=True))
    report = FolderReport(str(spec.path), listing.mode, counts,
                          tuple((s["file"], s["reason"]) for s in meta["skipped"]), tuple(listing.not_images),
                          shape=images.shape[1:], cache=str(final), from_cache=from_cache,
                          seconds=time.perf_counter() - start, decode_seconds=meta["decode_seconds"])
    return FolderDataset(data, report, tuple(meta["files"]))


def _nothing_to_load(spec: FolderSpec, listing: Listing) -> str:
    """Why a folder gave no labelled image, in one line: no files, files that are not images, or no labels."""
    if listing.not_images and not listing.skipped:
        names = ", ".join(listing.not_images[:3]) + (", ..." if len(listing.not_images) > 3 else "")
        return (f"no images in {spec.path}: its {len(listing.not_images)} file(s) ({names}) are not images Pillow "
                "can read; check the path")
    return (f"no labelled images in {spec.path} (labels from {listing.mode}); check the path and the "
            "labels/pattern/csv options")


def _cache_key(spec: FolderSpec, listing: Listing, limit: int) -> tuple[str, str]:
    """(cache folder name, its prefix for these options): ``<folder>-<options hash>-<files hash>``."""
    options = {"version": cache.CACHE_VERSION, "root": str(listing.root.resolve()), "mode": listing.mode,
               "pattern": spec.pattern or DEFAULT_PATTERN if listing.mode == "filename" else None,
               "csv": str(listing.csv.resolve()) if listing.csv else None, "size": list(spec.size),
               "grayscale": spec.grayscale, "resize": spec.resize, "max_pixels": limit}
    files = hashlib.sha256()
    for rel, label in listing.items:
        st = os.stat(listing.root / rel)
        files.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", listing.root.resolve().name)[:40] or "folder"
    opt = f"{slug}-{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]}"
    return f"{opt}-{files.hexdigest()[:16]}", opt
