"""One experiment's data, ready to train on: the dataset loaded, validation split off, normaliser fixed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnnlab.config import DataConfig
from cnnlab.data.datasets import load_dataset, load_test_split
from cnnlab.data.folder import FolderSpec, load_folder
from cnnlab.data.tensors import IMAGENET, ImageData, Normalizer, split
from cnnlab.errors import CnnlabError

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Data:
    """Prepared data of one experiment.

    Attributes:
        train: the training images.
        val: what validates each epoch (the test set when ``data.val_split`` is 0, as the tutorials do).
        test: the test images.
        normalizer: uint8 → model input.
        note: one line describing what validates and tests.
        report: folder datasets: the decode report (skipped files, imbalance).
    """

    train: ImageData
    val: ImageData | None
    test: ImageData
    normalizer: Normalizer
    note: str
    report: Any = None


def prepare_data(cfg: DataConfig, *, log: Log = _print, weights: Normalizer | None = None) -> Data:
    """Loads (or decodes) the dataset, splits validation off and fixes the normaliser.

    Args:
        cfg: the data section of the config.
        log: receives the folder decode report, line by line.
        weights: the normalisation the initial weights expect (their model's metadata), which
            ``data.normalize: auto`` follows; None for weights trained from scratch.

    Raises:
        CnnlabError: unknown dataset, missing or corrupt files, a bad split or folder option.
    """
    if cfg.dataset.startswith("folder:"):
        train, test, report = _folder_data(cfg, log)
        val, note = test, f"validating and testing on {len(test):,} held-out images (seed {cfg.split_seed})"
    else:
        train, test = load_dataset(cfg.dataset, cfg.data_dir)
        report = None
        if cfg.val_split:
            train, val = split(train, cfg.val_split, cfg.split_seed)
            note = f"validating on {len(val):,} held-out training images, testing on {len(test):,}"
        else:
            val, note = test, f"validating on the {len(test):,} test images each epoch (as the tutorials do)"
    return Data(train, val, test, make_normalizer(cfg.normalize, train, weights=weights), note, report)


def load_test_data(cfg: DataConfig) -> ImageData:
    """Just the test images of ``cfg`` (what evaluation, export checks and views need): no normaliser fit.

    Raises:
        CnnlabError: as :func:`prepare_data`.
    """
    if cfg.dataset.startswith("folder:"):
        return _folder_data(cfg, lambda s: None)[1]
    return load_test_split(cfg.dataset, cfg.data_dir)


def _folder_data(cfg: DataConfig, log: Log) -> tuple[ImageData, ImageData, Any]:
    if not cfg.image_size:
        raise CnnlabError("folder datasets need `data.image_size` (pixels, e.g. 50)")
    spec = FolderSpec(path=cfg.dataset[len("folder:"):], labels=cfg.labels, pattern=cfg.pattern, csv=cfg.csv,
                      image_size=cfg.image_size, grayscale=cfg.grayscale, resize=cfg.resize)
    loaded = load_folder(spec)
    for line in loaded.report.to_lines():
        log(line)
    val = cfg.val_split or 0.2
    train, test = split(loaded.data, val, cfg.split_seed, copy=False)  # rows of the memory-mapped cache
    return train, test, loaded.report


def make_normalizer(kind: str, train: ImageData, *, weights: Normalizer | None = None) -> Normalizer:
    """The input normalisation of ``data.normalize``.

    ``auto`` follows the initial weights (``weights``: their published statistics) and is ``unit`` (x / 255)
    otherwise; ``standard`` fits the training set's per-channel statistics; ``imagenet`` uses ImageNet's.
    Three-channel statistics meet one-channel (grey) data as their mean.
    """
    if kind == "auto":
        chosen = weights or Normalizer()
    elif kind == "standard":
        return Normalizer.fit(train)
    elif kind == "imagenet":
        chosen = IMAGENET
    else:
        return Normalizer()
    if train.shape[0] == 1 and len(chosen.mean) == 3:
        return Normalizer((sum(chosen.mean) / 3,), (sum(chosen.std) / 3,))
    return chosen
