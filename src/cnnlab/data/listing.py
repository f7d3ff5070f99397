"""Which files of a folder dataset are images, and their labels: class subfolders, file names or a CSV.

:class:`FolderSpec` says where a folder dataset is and how to decode it; :func:`collect` lists its image
files (every format Pillow reads, see :mod:`cnnlab.data.imagefiles`) with their labels, the images left out
for want of a label, and the files that are not images. Nothing is decoded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.data.csvlabels import read_label_csv
from cnnlab.data.decode import RESIZE_MODES, pixel_limit
from cnnlab.data.imagefiles import find_images
from cnnlab.errors import CnnlabError, one_of
from cnnlab.files import what_is

if TYPE_CHECKING:
    from cnnlab.config import DataConfig

LABEL_MODES = ("auto", "subfolders", "filename", "csv")
DEFAULT_PATTERN = r"^([^\W\d_]+)"  # leading run of letters: cat.123.jpg -> cat, dog_7.png -> dog
DEFAULT_IMAGE_SIZE = 64
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
        max_pixels: the most pixels one file may decode to (decompression bombs); None: ``$CNNLAB_MAX_PIXELS``
            or 100 MP (see :func:`cnnlab.data.decode.pixel_limit`).
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
    max_pixels: int | None = None

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
        if self.resize not in RESIZE_MODES:
            raise one_of("resize mode", self.resize, RESIZE_MODES)
        pixel_limit(self.max_pixels)  # a bad limit is refused here, before anything is read
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
class Listing:
    """Labelled files of a folder.

    Attributes:
        root: the folder the relative paths start from.
        mode: how labels were read (subfolders, filename or csv).
        items: (relative path, label) of each image to decode.
        skipped: (relative path, reason) of images left out (no label).
        not_images: relative paths of the files that are not images (skipped for their type).
        csv: the label CSV, if any.
    """

    root: Path
    mode: str
    items: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    csv: Path | None = None


def folder_spec(cfg: DataConfig) -> FolderSpec:
    """The folder dataset ``cfg.dataset`` (``folder:PATH``) describes."""
    return FolderSpec(path=cfg.dataset[len("folder:"):], labels=cfg.labels, pattern=cfg.pattern, csv=cfg.csv,
                      image_size=cfg.image_size, grayscale=cfg.grayscale, resize=cfg.resize,
                      file_column=cfg.file_column, label_column=cfg.label_column, max_pixels=cfg.max_pixels)


def collect(spec: FolderSpec) -> Listing:
    """Lists the files and their labels according to the spec (no decoding)."""
    csv_path = _csv_path(spec)
    if csv_path is not None:
        return _collect_csv(csv_path, spec)
    root = spec.path
    if not root.is_dir():
        raise CnnlabError(f"image folder {root} does not exist; check the path (a trained run whose images moved "
                          "takes their new folder as `data_dir`)")
    found = find_images(root)
    kinds = {p: what_is(p) for p in found.files}  # os.walk does not follow links to folders: no walk loops
    rels = [p.relative_to(root).as_posix() for p in found.files if kinds[p] is None]
    # a FIFO, a device, a symbolic link that loops or leads nowhere: said what it is, never opened
    unreadable = [(p.relative_to(root).as_posix(), why) for p in found.files if (why := kinds[p]) is not None]
    mode = spec.labels
    if mode == "auto":
        mode = "subfolders" if any("/" in r for r in rels) else "filename"
    listing = Listing(root, mode, skipped=unreadable, not_images=found.not_images)
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
    return sorted({label for _, label in collect(spec).items})


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


def _collect_csv(path: Path, spec: FolderSpec) -> Listing:
    found = read_label_csv(path, file_column=spec.file_column, label_column=spec.label_column)
    return Listing(path.parent, "csv", found.items, found.skipped, csv=path)
