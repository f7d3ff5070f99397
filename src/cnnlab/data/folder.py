"""Folders of image files as datasets: labels from subfolders, file names or a CSV; a decoded cache.

The first load decodes every file once, in parallel over all cores, to the target size, into a uint8
``(N, C, H, W)`` file under ``cache_dir()/folders/<key>/`` (``images.u8`` + ``labels.npy`` +
``meta.json``). Later loads map that file (``numpy.memmap`` → ``torch.from_numpy``, no copy) and are
near-instant; a folder bigger than RAM then streams through the OS page cache. The key hashes the
options and every file's path, label, size and mtime, so changing either builds a new cache (and removes
the stale one for the same folder and options). The cache is built in a temporary folder and renamed
into place, so an interrupted build never looks complete.

Files that cannot be used (empty, not an image, corrupt, truncated, decompression bombs, unlabelled) are
skipped and listed with a reason in the report; they never stop a load. Class imbalance is flagged when
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.data import decode
from cnnlab.data.csvlabels import read_label_csv
from cnnlab.data.decode import BadImage, decode_image, list_images  # noqa: F401  (re-exported)
from cnnlab.data.tensors import ImageData
from cnnlab.errors import CnnlabError, one_of
from cnnlab.io import cache_dir

LABEL_MODES = ("auto", "subfolders", "filename", "csv")
DEFAULT_PATTERN = r"^([^\W\d_]+)"  # leading run of letters: cat.123.jpg -> cat, dog_7.png -> dog
DEFAULT_IMAGE_SIZE = 64
IMBALANCE_RATIO = 1.5  # largest / smallest class count above which a folder is flagged as imbalanced
_SPLIT_NAMES = {"train", "test", "val", "valid", "validation"}


@dataclass(frozen=True)
class FolderSpec:
    r"""Where a folder dataset is and how to turn its files into tensors.

    Attributes:
        path: the folder (or, with CSV labels, the CSV file itself).
        labels: ``subfolders`` (``root/<class>/...``), ``filename`` (``pattern`` on the file name),
            ``csv`` (``csv`` file of ``file,label`` rows) or ``auto``: ``csv`` when ``csv`` is given, else
            ``subfolders`` when the folder has subfolders holding images, else ``filename``.
        pattern: regex searched in each file name; its first capture group (or the whole match) is the
            label. None means the default, the leading word (``cat.123.jpg`` → cat, ``dog_7.png`` → dog);
            names with several words need their own, e.g. ``^(.+)_\d+\.`` for ``great_pyrenees_12.jpg``.
        csv: ``file,label`` CSV (header row optional); files are relative to the CSV's folder. A relative
            CSV path is looked up in ``path`` first.
        file_column, label_column: the CSV columns (by header name) of the file and the label; by default
            found by name (see :mod:`cnnlab.data.csvlabels`).
        image_size: output size, one int for square or (H, W); None means 64.
        grayscale: decode to one channel (luma) instead of RGB.
        resize: ``squash`` (plain resize to the size, as cv2.resize does) or ``crop`` (centre-crop to the
            target's aspect ratio, then resize; no distortion, edges lost).
    """

    path: Path
    labels: str = "auto"
    pattern: str | None = None
    csv: Path | None = None
    file_column: str | None = None
    label_column: str | None = None
    image_size: int | tuple[int, int] | None = DEFAULT_IMAGE_SIZE
    grayscale: bool = False
    resize: str = "squash"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "path", Path(self.path).expanduser())
        if self.csv is not None:
            set_(self, "csv", Path(self.csv).expanduser())
        size = DEFAULT_IMAGE_SIZE if self.image_size is None else self.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or not all(type(s) is int and 1 <= s <= 4096 for s in size):  # bool is not a size
            raise CnnlabError(f"image_size {self.image_size!r} is invalid; use pixels in 1..4096 as one "
                              "number (square) or [height, width]")
        set_(self, "image_size", size)
        if self.labels not in LABEL_MODES:
            raise one_of("label source", self.labels, LABEL_MODES)
        if self.resize not in decode.RESIZE_MODES:
            raise one_of("resize mode", self.resize, decode.RESIZE_MODES)
        try:
            re.compile(self.pattern or DEFAULT_PATTERN)
        except re.error as exc:
            raise CnnlabError(f"label pattern {self.pattern!r} is not a valid regex ({exc}); fix the "
                              "pattern, e.g. '^([a-z]+)'") from None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the decoded images."""
        return self.image_size  # type: ignore[return-value]  # normalised in __post_init__


@dataclass
class _Listing:
    """Labelled files of a folder: ``items`` are (relative path, label); ``skipped`` (path, reason)."""

    root: Path
    mode: str
    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    csv: Path | None = None


def _collect(spec: FolderSpec) -> _Listing:
    """Lists the files and their labels according to the spec (no decoding)."""
    csv_path = _csv_path(spec)
    if csv_path is not None:
        return _collect_csv(csv_path, spec)
    root = spec.path
    if not root.is_dir():
        raise CnnlabError(f"image folder {root} does not exist; check the path (a trained run whose images moved "
                          "takes their new folder as `data_dir`)")
    found = list_images(root)
    rels = [p.relative_to(root).as_posix() for p in found if p.is_file()]
    # a symbolic link that loops or leads nowhere (os.walk does not follow links to folders, so no walk loops)
    unreadable = [(p.relative_to(root).as_posix(), "a symbolic link that loops or leads nowhere")
                  for p in found if not p.is_file()]
    mode = spec.labels
    if mode == "auto":
        mode = "subfolders" if any("/" in r for r in rels) else "filename"
    listing = _Listing(root, mode, skipped=unreadable)
    if mode == "subfolders":
        for rel in rels:
            if "/" in rel:
                listing.items.append((rel, rel.split("/", 1)[0]))
            else:
                listing.skipped.append((rel, "not inside a class subfolder"))
        classes = {label for _, label in listing.items}
        if spec.labels == "auto" and len(classes) > 1 and classes <= _SPLIT_NAMES:
            raise CnnlabError(f"{root} holds split folders ({', '.join(sorted(classes))}), not classes; "
                              f"point the path at one split, e.g. {root / sorted(classes)[-1]}")
        return listing
    regex = re.compile(spec.pattern or DEFAULT_PATTERN)
    for rel in rels:
        m = regex.search(rel.rsplit("/", 1)[-1])
        label = (m.group(1) if m.groups() else m.group(0)) if m else None
        if label:
            listing.items.append((rel, label))
        else:
            listing.skipped.append((rel, f"file name does not match label pattern {regex.pattern!r}"))
    return listing


def folder_classes(spec: FolderSpec) -> list[str]:
    """The class names a folder's labels give (sorted), without decoding any image."""
    return sorted({label for _, label in _collect(spec).items})


def _csv_path(spec: FolderSpec) -> Path | None:
    if spec.csv is None:
        if spec.path.suffix.lower() == ".csv" and spec.labels in ("auto", "csv"):
            return spec.path
        if spec.labels == "csv":
            raise CnnlabError("`data.labels` csv needs a CSV file; set `data.csv` to a file of 'file,label' rows")
        return None
    if spec.labels not in ("auto", "csv"):
        raise CnnlabError(f"a CSV is given but `data.labels` is {spec.labels!r}; set it to csv or drop `data.csv`")
    path = spec.csv if spec.csv.is_absolute() or not (spec.path / spec.csv).exists() else spec.path / spec.csv
    if not path.is_file():
        raise CnnlabError(f"label CSV {path} does not exist; check `data.csv`")
    return path


def _collect_csv(path: Path, spec: FolderSpec) -> _Listing:
    found = read_label_csv(path, file_column=spec.file_column, label_column=spec.label_column)
    return _Listing(path.parent, "csv", found.items, found.skipped, csv=path)


def _imbalance(counts: dict[str, int]) -> float:
    """Largest over smallest class count (1 = balanced; inf when a class is empty)."""
    low = min(counts.values(), default=1)
    return max(counts.values(), default=1) / low if low else float("inf")


@dataclass(frozen=True)
class _Summary:
    """Fields and screen lines shared by :class:`FolderReport` and :class:`FolderInspection`."""

    source: str
    labels: str
    counts: dict[str, int]
    skipped: tuple[tuple[str, str], ...]

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

    def _base_dict(self) -> dict[str, Any]:
        return {"source": self.source, "labels": self.labels, "images": sum(self.counts.values()),
                "counts": dict(self.counts), "imbalance": self.imbalance, "imbalanced": self.imbalanced,
                "skipped": [{"file": p, "reason": r} for p, r in self.skipped]}


@dataclass(frozen=True)
class FolderReport(_Summary):
    """What a folder load found and did.

    Attributes:
        source: the folder.
        labels: how labels were read (subfolders, filename or csv).
        counts: images per class, in class order.
        skipped: (relative path, reason) of every file left out: unlabelled or unreadable.
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
        return [head, *self._class_lines(), *self._file_lines("skipped", self.skipped)]

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
    listing = _collect(spec)
    if not listing.items:
        raise CnnlabError(f"no labelled images in {spec.path} (labels from {listing.mode}); "
                          "check the path and the labels/pattern/csv options")
    key, opt_key = _cache_key(spec, listing)
    root = cache_dir() / "folders"
    final = root / key
    meta = decode.read_cache_meta(final)
    if meta is None:
        info = {"source": str(listing.root), "labels": listing.mode, "pattern": spec.pattern,
                "csv": str(listing.csv) if listing.csv else None}
        meta = decode.build_cache(final, listing.root, listing.items, spec.size, spec.grayscale, spec.resize,
                                  workers=workers or decode.cores(), progress=progress,
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
    images, labels = decode.open_cache(final, meta)
    data = ImageData(torch.from_numpy(images), torch.from_numpy(labels), classes, f"folder:{spec.path}")
    counts = dict(zip(classes, data.class_counts(), strict=True))
    report = FolderReport(str(spec.path), listing.mode, counts,
                          tuple((s["file"], s["reason"]) for s in meta["skipped"]), images.shape[1:], str(final),
                          from_cache, time.perf_counter() - start, meta["decode_seconds"])
    return FolderDataset(data, report, tuple(meta["files"]))


def _cache_key(spec: FolderSpec, listing: _Listing) -> tuple[str, str]:
    """(cache folder name, its prefix for these options): ``<folder>-<options hash>-<files hash>``."""
    options = {"version": decode.CACHE_VERSION, "root": str(listing.root.resolve()), "mode": listing.mode,
               "pattern": spec.pattern or DEFAULT_PATTERN if listing.mode == "filename" else None,
               "csv": str(listing.csv.resolve()) if listing.csv else None, "size": list(spec.size),
               "grayscale": spec.grayscale, "resize": spec.resize}
    files = hashlib.sha256()
    for rel, label in listing.items:
        st = os.stat(listing.root / rel)
        files.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", listing.root.resolve().name)[:40] or "folder"
    opt = f"{slug}-{hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:10]}"
    return f"{opt}-{files.hexdigest()[:16]}", opt


@dataclass(frozen=True)
class FolderInspection(_Summary):
    """What is in a folder, from file headers only (nothing is decoded or cached).

    Attributes:
        source: the folder.
        labels: how labels were read.
        counts: readable files per class, classes sorted.
        skipped: (relative path, reason) of files without a label.
        sizes: (width, height) -> number of files.
        formats: file format (JPEG, PNG, ...) -> number of files.
        modes: PIL colour mode (RGB, L, P, RGBA, CMYK, ...) -> number of files.
        bad: (relative path, reason) of files a header read shows to be unusable.
        total_bytes: size of the readable files.
    """

    sizes: dict[tuple[int, int], int]
    formats: dict[str, int]
    modes: dict[str, int]
    bad: tuple[tuple[str, str], ...]
    total_bytes: int

    def to_lines(self, top: int = 5) -> list[str]:
        """A human summary for the screen; the ``top`` most common sizes are listed."""
        n = sum(self.counts.values())
        lines = [f"{self.source}: {n} readable images, {len(self.counts)} classes (labels from {self.labels}), "
                 f"{self.total_bytes / 1e6:.1f} MB", *self._class_lines()]
        if self.sizes:
            ws, hs = [w for w, _ in self.sizes], [h for _, h in self.sizes]
            common = ", ".join(f"{w}×{h} ({100 * k / n:.0f}%)" for (w, h), k in Counter(self.sizes).most_common(top))
            lines += [f"sizes (W×H): {len(self.sizes)} distinct; most common {common}",
                      f"  width {min(ws)}..{max(ws)}, height {min(hs)}..{max(hs)}"]
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in Counter(self.formats).most_common()) +
                     "; modes: " + ", ".join(f"{k} {v}" for k, v in Counter(self.modes).most_common()))
        return lines + self._file_lines("unreadable:", self.bad) + self._file_lines("skipped", self.skipped)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {**self._base_dict(), "sizes": {f"{w}x{h}": k for (w, h), k in Counter(self.sizes).most_common()},
                "formats": dict(self.formats), "modes": dict(self.modes), "total_bytes": self.total_bytes,
                "bad": [{"file": p, "reason": r} for p, r in self.bad]}


def inspect_folder(path: str | os.PathLike, labels: str = "auto", pattern: str | None = None,
                   csv: str | os.PathLike | None = None, *, file_column: str | None = None,
                   label_column: str | None = None) -> FolderInspection:
    """Counts, sizes, formats and unreadable files of a folder, from headers (no decode, no cache).

    Header reads catch empty, non-image, bomb and (for JPEG/PNG) truncated files; damage in the middle
    of a file only shows when it is decoded, and such files are then skipped by :func:`load_folder`.

    Args:
        path: the folder (or the CSV file).
        labels: as in :class:`FolderSpec`.
        pattern: as in :class:`FolderSpec`.
        csv: as in :class:`FolderSpec`.
        file_column: as in :class:`FolderSpec`.
        label_column: as in :class:`FolderSpec`.

    Raises:
        CnnlabError: the folder, CSV or options are wrong.
    """
    listing = _collect(FolderSpec(Path(path), labels, pattern, Path(csv) if csv else None,
                                  file_column=file_column, label_column=label_column))
    counts: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    formats: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    bad, total = [], 0
    for rel, label in listing.items:
        file = listing.root / rel
        try:
            fmt, size, mode = decode.probe(file)
        except BadImage as exc:
            bad.append((rel, str(exc)))
            continue
        counts[label] += 1
        sizes[size] += 1
        formats[fmt] += 1
        modes[mode] += 1
        total += file.stat().st_size
    return FolderInspection(str(listing.root), listing.mode, dict(sorted(counts.items())), tuple(listing.skipped),
                            dict(sizes), dict(formats), dict(modes), tuple(bad), total)
