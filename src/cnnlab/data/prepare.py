"""One experiment's data, ready to train on: the dataset loaded, validation split off, normaliser fixed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cnnlab.config import DataConfig
from cnnlab.data.datasets import load_dataset, load_test_split
from cnnlab.data.folder import load_folder
from cnnlab.data.listing import folder_spec
from cnnlab.data.tensors import IMAGENET, RAW, ImageData, Normalizer, constant_channels, split
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
            val, note = test, f"validating on the {len(test):,} test images (as the tutorials do)"
    if cfg.normalize == "standard" and (flat := constant_channels(train)):
        names = ", ".join(f"{i} ({_CHANNEL_NAMES.get((train.shape[0], i), i)})" for i in flat)
        log(f"note: channel {names} is constant in the training images (std 0); it is shifted, not scaled")
    _note_missing_classes(train, test, log)
    return Data(train, val, test, make_normalizer(cfg.normalize, train, weights=weights), note, report)


_CHANNEL_NAMES = {(3, 0): "red", (3, 1): "green", (3, 2): "blue", (1, 0): "grey"}


def _note_missing_classes(train: ImageData, test: ImageData, log: Log) -> None:
    """One line per class that has no training or no test image (its accuracy cannot be learned or measured)."""
    for name, data, what in (("training", train, "the model cannot learn it"),
                             ("test", test, "its accuracy is n/a")):
        empty = [c for c, n in zip(data.classes, data.class_counts(), strict=True) if n == 0]
        if empty:
            log(f"warning: class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
                f"{'have' if len(empty) > 1 else 'has'} no {name} images; {what}")


def load_test_data(cfg: DataConfig) -> ImageData:
    """Just the test images of ``cfg`` (what evaluation, export checks and views need): no normaliser fit.

    Raises:
        CnnlabError: as :func:`prepare_data`.
    """
    if not cfg.dataset:
        raise CnnlabError("the run names no dataset (`data.dataset` is empty, as for a model imported without one), "
                          "so it has no test images; import it again with `dataset`")
    if cfg.dataset.startswith("folder:"):
        return _folder_data(cfg, lambda s: None)[1]
    return load_test_split(cfg.dataset, cfg.data_dir)


def load_train_data(cfg: DataConfig) -> ImageData:
    """Just the training images of ``cfg`` (what int8 calibration needs): no validation split, no normaliser.

    Raises:
        CnnlabError: as :func:`prepare_data`.
    """
    if not cfg.dataset:
        raise CnnlabError("the run names no dataset (`data.dataset` is empty), so it has no training images")
    if cfg.dataset.startswith("folder:"):
        return _folder_data(cfg, lambda s: None)[0]
    return load_dataset(cfg.dataset, cfg.data_dir)[0]


def _folder_data(cfg: DataConfig, log: Log) -> tuple[ImageData, ImageData, Any]:
    if not cfg.image_size:
        raise CnnlabError("folder datasets need `data.image_size` (pixels, e.g. 50)")
    spec = folder_spec(cfg)
    loaded = load_folder(spec)
    for line in loaded.report.to_lines():
        log(line)
    val = cfg.val_split or 0.2
    train, test = split(loaded.data, val, cfg.split_seed, copy=False)  # rows of the memory-mapped cache
    return train, test, loaded.report


def relocate(cfg: DataConfig, data_dir: str | os.PathLike | None) -> DataConfig:
    """The data section with its files looked for in ``data_dir``: a registered dataset's data root, or, for a
    folder dataset, the image folder itself (a run copied to another machine, a folder that moved)."""
    if not data_dir:
        return cfg
    if cfg.dataset.startswith("folder:"):
        return replace(cfg, dataset=f"folder:{Path(data_dir).expanduser().resolve()}", data_dir=None)
    return replace(cfg, data_dir=str(Path(data_dir).expanduser().resolve()))


def make_normalizer(kind: str, train: ImageData, *, weights: Normalizer | None = None) -> Normalizer:
    """The input normalisation of ``data.normalize``.

    ``auto`` follows the initial weights (``weights``: their published statistics) and is ``unit`` (x / 255)
    otherwise; ``standard`` fits the training set's per-channel statistics; ``imagenet`` uses ImageNet's;
    ``raw`` keeps the 0..255 values (std 1/255: ``x / 255 / (1/255)`` is exactly ``x`` in float32).
    Three-channel statistics meet one-channel (grey) data as their mean.
    """
    if kind == "auto":
        chosen = weights or Normalizer()
    elif kind == "standard":
        return Normalizer.fit(train)
    elif kind == "imagenet":
        chosen = IMAGENET
    elif kind == "raw":
        return RAW
    else:
        return Normalizer()
    if train.shape[0] == 1 and len(chosen.mean) == 3:
        return Normalizer((sum(chosen.mean) / 3,), (sum(chosen.std) / 3,))
    return chosen
