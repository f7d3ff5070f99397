"""``cnnlab datasets inspect``: what a folder of images holds, from file headers only, before any training.

Classes and counts, sizes as displayed (EXIF rotation applied), formats and colour modes, what decoding
will convert (16-bit and float pixels scaled by bit depth, CMYK, palettes, transparency), unreadable files
with a reason, and the files that are not images. Nothing is decoded or cached; the same listing
(:func:`cnnlab.data.listing.collect`) and decoder checks (:func:`cnnlab.data.decode.probe`) as training.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.data.decode import BadImage, probe
from cnnlab.data.folder import FolderSummary
from cnnlab.data.listing import FolderSpec, collect


@dataclass(frozen=True)
class FolderInspection(FolderSummary):
    """What is in a folder, from file headers only (the fields of ``FolderSummary``, and these).

    Attributes:
        sizes: (width, height) as displayed (EXIF orientation applied) -> number of files.
        formats: file format (JPEG, PNG, TIFF, ...) -> number of files.
        modes: PIL colour mode (RGB, L, P, RGBA, CMYK, I;16, F, ...) -> number of files.
        conversions: what decoding does to the pixel values (``16-bit grey (I;16) ÷257``, ``CMYK → RGB``)
            -> number of files; files decoded as they are are not counted.
        bad: (relative path, reason) of files a header read shows to be unusable.
        total_bytes: size of the readable files.
    """

    sizes: dict[tuple[int, int], int]
    formats: dict[str, int]
    modes: dict[str, int]
    conversions: dict[str, int]
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
            lines += [f"sizes (W×H, as displayed): {len(self.sizes)} distinct; most common {common}",
                      f"  width {min(ws)}..{max(ws)}, height {min(hs)}..{max(hs)}"]
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in Counter(self.formats).most_common()) +
                     "; modes: " + ", ".join(f"{k} {v}" for k, v in Counter(self.modes).most_common()))
        if self.conversions:
            lines.append("converted when decoded: " + "; ".join(
                f"{k} {what}" for what, k in Counter(self.conversions).most_common()))
        return (lines + self._file_lines("unreadable:", self.bad) + self._file_lines("skipped", self.skipped)
                + self._not_images_lines())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {**self._base_dict(), "sizes": {f"{w}x{h}": k for (w, h), k in Counter(self.sizes).most_common()},
                "formats": dict(self.formats), "modes": dict(self.modes), "conversions": dict(self.conversions),
                "total_bytes": self.total_bytes, "bad": [{"file": p, "reason": r} for p, r in self.bad]}


def inspect_folder(path: str | os.PathLike, labels: str = "auto", pattern: str | None = None,
                   csv: str | os.PathLike | None = None, *, file_column: str | None = None,
                   label_column: str | None = None, max_pixels: int | None = None) -> FolderInspection:
    """Counts, displayed sizes, formats, conversions and unreadable files of a folder, from headers only.

    Header reads catch empty, non-image, bomb and (for JPEG/PNG) truncated files; damage in the middle
    of a file only shows when it is decoded, and such files are then skipped by
    :func:`cnnlab.data.folder.load_folder`. A JPEG counts as a bomb only when even its 1/8-scale decode is
    over the limit (training decodes it reduced).

    Args:
        path: the folder (or the CSV file).
        labels: as in :class:`~cnnlab.data.listing.FolderSpec`.
        pattern: as in ``FolderSpec``.
        csv: as in ``FolderSpec``.
        file_column: as in ``FolderSpec``.
        label_column: as in ``FolderSpec``.
        max_pixels: as in ``FolderSpec`` (None: ``$CNNLAB_MAX_PIXELS`` or 100 MP).

    Raises:
        CnnlabError: the folder, CSV or options are wrong.
    """
    listing = collect(FolderSpec(Path(path), labels, pattern, Path(csv) if csv else None,
                                 file_column=file_column, label_column=label_column, max_pixels=max_pixels))
    counts: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()
    formats: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    conversions: Counter[str] = Counter()
    bad, total = [], 0
    for rel, label in listing.items:
        file = listing.root / rel
        try:
            found = probe(file, max_pixels=max_pixels)
        except BadImage as exc:
            bad.append((rel, str(exc)))
            continue
        counts[label] += 1
        sizes[found.size] += 1
        formats[found.format] += 1
        modes[found.mode] += 1
        if found.conversion:
            conversions[found.conversion] += 1
        total += file.stat().st_size
    return FolderInspection(str(listing.root), listing.mode, dict(sorted(counts.items())), tuple(listing.skipped),
                            tuple(listing.not_images), sizes=dict(sizes), formats=dict(formats), modes=dict(modes),
                            conversions=dict(conversions), bad=tuple(bad), total_bytes=total)
