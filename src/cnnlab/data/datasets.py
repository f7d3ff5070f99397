"""Registered datasets: official files and checksums, resolution, verification and loading.

A dataset is found in the first data root that has its folder (``--data-dir``, ``$CNNLAB_DATA``, the
cache) and otherwise downloaded into the cache. Files are verified against the published checksums; a
verified file's (size, mtime) is remembered in the cache so later runs skip re-hashing.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.data import cifar
from cnnlab.data.idx import read_idx_cached
from cnnlab.data.sources import data_roots
from cnnlab.errors import CnnlabError
from cnnlab.io import RemoteFile, cache_dir, check_file, download_file, write_atomic
from cnnlab.registry import Registry

if TYPE_CHECKING:
    from cnnlab.data.tensors import ImageData

SAMPLES_DIR = Path(__file__).parent / "samples"
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class DatasetInfo:
    """What cnnlab knows about a dataset.

    Attributes:
        name: registry name, also the folder name in a data root.
        description: one line.
        classes: class names in label order.
        shape: (C, H, W) of one image.
        sizes: (train, test) image counts.
        files: the official files with mirrors and checksums.
        homepage: where the dataset is described.
        bundled: shipped inside the package (no download).
        layout: ``idx`` or ``cifar``.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    sizes: tuple[int, int]
    files: tuple[RemoteFile, ...]
    homepage: str = ""
    bundled: bool = False
    layout: str = "idx"


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _idx_files(base_urls: tuple[str, ...], checks: dict[str, tuple[str, str, int]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(n, tuple(u + n for u in base_urls), sha, md5, size) for n, (sha, md5, size) in checks.items())


DATASETS.add("mnist", DatasetInfo(
    "mnist", "MNIST handwritten digits, 28x28 grayscale, 60k train / 10k test",
    tuple(str(i) for i in range(10)), (1, 28, 28), (60000, 10000),
    _idx_files(("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "http://yann.lecun.com/exdb/mnist/"), {
        IDX_FILES[0]: ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        IDX_FILES[1]: ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", "d53e105ee54ea40749a09fcbcd1e9432", 28881),
        IDX_FILES[2]: ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", "9fb629c4189551a2d022fa330f9573f3", 1648877),
        IDX_FILES[3]: ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", "ec29112dd5afa0611ce80d1b7f02629c", 4542),
    }), "http://yann.lecun.com/exdb/mnist/"))

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DATASETS.add("fashion-mnist", DatasetInfo(
    "fashion-mnist", "Fashion-MNIST (Zalando) clothing, 28x28 grayscale, 60k train / 10k test",
    FASHION_CLASSES, (1, 28, 28), (60000, 10000),
    _idx_files(("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"), {
        IDX_FILES[0]: ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        IDX_FILES[1]: ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", "25c81989df183df01b3e8a0aad5dffbe", 29515),
        IDX_FILES[2]: ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", "bef4ecab320f06d8554ea6380940ec79", 4422102),
        IDX_FILES[3]: ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", "bb300cfdad3c16e7a12a480ee83cd310", 5148),
    }), "https://github.com/zalandoresearch/fashion-mnist"))

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DATASETS.add("cifar-10", DatasetInfo(
    "cifar-10", "CIFAR-10 tiny images, 32x32 RGB, 10 classes, 50k train / 10k test",
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    (3, 32, 32), (50000, 10000),
    tuple(RemoteFile(f"{cifar.FOLDER}/{n}", (), None, md5, size) for n, md5, size in (
        ("data_batch_1", "c99cafc152244af753f735de768cd75f", 31035704),
        ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", 31035320),
        ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751", 31035999),
        ("data_batch_4", "634d18415352ddfa80567beed471001a", 31035696),
        ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", 31035623),
        ("test_batch", "40351d587109b95175f43aff81a1287e", 31035526),
        ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888", 158),
    )), "https://www.cs.toronto.edu/~kriz/cifar.html", layout="cifar"))
CIFAR_ARCHIVE = RemoteFile("cifar-10-python.tar.gz", (_CIFAR_URL,), None, "c58f30108f718f92721af3b95e74349a", 170498071)


def _register_samples() -> None:
    """Bundled real subsets (made by scripts/make_sample.py); their checksums live in checksums.json."""
    for folder in sorted(SAMPLES_DIR.glob("*/checksums.json")):
        meta = json.loads(folder.read_text())
        files = tuple(RemoteFile(n, (), sha, None, size) for n, (sha, size) in meta["files"].items())
        DATASETS.add(folder.parent.name, DatasetInfo(
            folder.parent.name, meta["description"], tuple(meta["classes"]), tuple(meta["shape"]),
            tuple(meta["sizes"]), files, meta.get("homepage", ""), bundled=True))


_register_samples()


# ------------------------------------------------------------------------------------------ resolution


def _verified_cache() -> Path:
    return cache_dir() / "verified.json"


def verify(path: Path, spec: RemoteFile) -> None:
    """Checks a file against its published checksum, skipping the hash when (size, mtime) were verified before."""
    st = path.stat()
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, spec.sha256 or spec.md5]
    store = _verified_cache()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(key) == stamp:
        return
    check_file(path, spec)
    known[key] = stamp
    # best effort: a read-only cache (atomic writes report it as a CnnlabError) only costs a re-hash next time
    with contextlib.suppress(OSError, CnnlabError):
        write_atomic(store, json.dumps(known))


def locate(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The verified folder holding dataset ``name``'s files, downloading into the cache if needed.

    Raises:
        CnnlabError: unknown dataset; a file present but corrupt (names it); or files missing and the
            download impossible (says which files to put where).
    """
    info = DATASETS.get(name)
    if info.bundled:
        folder = SAMPLES_DIR / name
        for f in info.files:
            verify(folder / f.name, f)
        return folder
    if data_dir and not Path(data_dir).expanduser().is_dir():  # a typo must not fall back to another copy
        given = Path(data_dir).expanduser()
        raise _missing(info, [given], f"`data_dir` {given} is not a folder")
    roots = data_roots(data_dir)
    for root in roots:
        folder = root / name
        if all((folder / f.name).is_file() for f in info.files):
            for f in info.files:
                verify(folder / f.name, f)
            return folder
        archive = folder / CIFAR_ARCHIVE.name
        if info.layout == "cifar" and archive.is_file():  # the official archive: verify, unpack into the cache
            verify(archive, CIFAR_ARCHIVE)
            return _unpacked(archive, roots[-1] / name, info)
    if not download:
        raise _missing(info, roots, "downloads are off")
    return _download(info, roots[-1] / name, roots)


def _unpacked(archive: Path, target: Path, info: DatasetInfo) -> Path:
    cifar.extract(archive, target)
    for f in info.files:
        verify(target / f.name, f)
    return target


def _download(info: DatasetInfo, target: Path, roots: list[Path]) -> Path:
    try:
        if info.layout == "cifar":
            archive = target / CIFAR_ARCHIVE.name
            if not archive.is_file():
                download_file(CIFAR_ARCHIVE.urls, archive, md5=CIFAR_ARCHIVE.md5)
            return _unpacked(archive, target, info)
        for f in info.files:
            if not (target / f.name).is_file():
                download_file(f.urls, target / f.name, sha256=f.sha256, md5=f.md5)
    except CnnlabError as exc:
        raise _missing(info, roots, str(exc)) from None
    for f in info.files:
        verify(target / f.name, f)
    return target


class DatasetMissing(CnnlabError):
    """A registered dataset's files are neither on this machine nor downloadable (``dataset`` names it)."""

    def __init__(self, message: str, dataset: str) -> None:
        super().__init__(message)
        self.dataset = dataset


def _missing(info: DatasetInfo, roots: list[Path], why: str) -> DatasetMissing:
    names = ", ".join(Path(f.name).name for f in info.files) if info.layout != "cifar" else \
        f"{cifar.FOLDER}/ (or {CIFAR_ARCHIVE.name})"
    where = " or ".join(str(r / info.name) for r in roots)
    return DatasetMissing(f"{info.name} is not available: put {names} into {where} (or pass `data_dir` DIR / set "
                          f"CNNLAB_DATA to a folder holding {info.name}/); {why}", info.name)


# -------------------------------------------------------------------------------------------- loading


SPLITS = ("train", "test")
Loader = Callable[[Path, DatasetInfo, Sequence[str]], "list[ImageData]"]


def _image_data(images: np.ndarray, labels: np.ndarray, info: DatasetInfo, split: str) -> ImageData:
    """One split as :class:`ImageData` of uint8 images (N, C, H, W), not copied, and labels (N,) as int64."""
    # lazy: start-up time, torch costs ~1.1 s that `cnnlab datasets list` / `info` (this registry) never need
    import torch

    from cnnlab.data.tensors import ImageData

    return ImageData(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64, copy=False)), info.classes,
                     f"{info.name}:{split}")


def _load_idx(folder: Path, info: DatasetInfo, splits: Sequence[str] = SPLITS) -> list[ImageData]:
    out = []
    for split in splits:
        prefix = {"train": "train", "test": "t10k"}[split]
        x = read_idx_cached(folder / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx_cached(folder / f"{prefix}-labels-idx1-ubyte.gz")
        if x.ndim != 3 or y.shape != (x.shape[0],):
            raise CnnlabError(f"{folder}: {prefix} images {x.shape} and labels {y.shape} do not match")
        # a fresh decode is a read-only frombuffer view: copy it; the cache's np.load array is writable already
        images = np.expand_dims(x if x.flags.writeable else x.copy(), 1)  # (N, H, W) → (N, 1, H, W), a view
        out.append(_image_data(images, y, info, split))
    return out


def _load_cifar(folder: Path, info: DatasetInfo, splits: Sequence[str] = SPLITS) -> list[ImageData]:
    batches = folder / cifar.FOLDER
    out = []
    for split in splits:
        x, y = cifar.read_split(batches, cifar.TRAIN_BATCHES if split == "train" else (cifar.TEST_BATCH,))
        out.append(_image_data(x, y, info, split))
    return out


_LOADERS: dict[str, Loader] = {"idx": _load_idx, "cifar": _load_cifar}


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> tuple[ImageData, ImageData]:
    """(train, test) of a registered dataset, each one uint8 tensor in memory."""
    info = DATASETS.get(name)
    folder = locate(name, data_dir, download=download)
    train, test = _LOADERS[info.layout](folder, info, SPLITS)
    return train, test


def load_test_split(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True) -> ImageData:
    """Only the test split of a registered dataset: the training files are verified but not decoded
    (Fashion-MNIST's test set alone is ~1/7 of the work)."""
    info = DATASETS.get(name)
    folder = locate(name, data_dir, download=download)
    return _LOADERS[info.layout](folder, info, ("test",))[0]


def where_is(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where ``name`` would be read from now (without downloading or hashing), for ``datasets info``."""
    info = DATASETS.get(name)
    if info.bundled:
        return str(SAMPLES_DIR / name) + " (bundled)"
    for root in data_roots(data_dir):
        if all((root / name / f.name).is_file() for f in info.files):
            return str(root / name)
    return f"not found locally; would download into {data_roots(data_dir)[-1] / name}"
