"""Keras's ``model.summary()`` table of anything ``cnnlab summary`` takes, without PyTorch for a layer list.

A Keras-style layer list (a tutorial model, a config whose model is one or names one, a YAML file holding one)
fixes every output shape and parameter count by itself, as in Keras: its table comes from
:func:`cnnlab.models.kerastable.spec_summary_text` and needs no torch (whose import alone is ~1.2 s). Anything
else (the classic families, run directories, Keras model files, ``nn.Module`` objects, and a layer list at an
input that is not three positive sizes) is built and traced (:func:`cnnlab.models.summary.summary_text`).
Both give the same text for a layer list (tests/app/test_summary.py compares them for every packaged one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.config import Config, ModelConfig, config_path, from_dict, read_yaml
from cnnlab.data.datasets import DATASETS
from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.catalog import catalog
from cnnlab.models.kerastable import spec_summary_text
from cnnlab.models.registry import MODELS, check_build_args, create_model, model_meta
from cnnlab.models.seeds import SEED_SPECS, seed_layers
from cnnlab.models.specinfo import KERAS_SUFFIXES

if TYPE_CHECKING:
    from torch import nn


def summary(model: str | Path | Config | nn.Module, *, input_shape: Sequence[int] | None = None,
            num_classes: int | None = None) -> str:
    """Keras's ``model.summary()`` table of a model, a registered name, a config (name, YAML or object), a run
    directory or a Keras model file (``.h5`` / ``.keras``, converted as ``cnnlab import-keras`` does).

    A YAML file may also hold just a list of layers. A config's input comes from its data section
    (registered dataset, or ``data.image_size`` and ``data.grayscale`` for folders). A layer list's table is
    worked out from the list without building the model (no torch); the text is the traced one's.

    Args:
        model: an ``nn.Module``, a registered model name, a packaged config name, a YAML path, a Config, a run
            directory or a Keras ``.h5`` / ``.keras`` file.
        input_shape: (C, H, W); needed for an ``nn.Module`` and for configs whose data cannot tell it.
        num_classes: outputs, when the name or config does not fix them.

    Raises:
        CnnlabError: unknown name or file, or an input shape that cannot be worked out.
    """
    if not isinstance(model, (str, os.PathLike, Config)):  # a model object (anything else fails as a path)
        traced = _object_table(model, input_shape)
        if traced is not None:
            return traced
    if isinstance(model, str) and (model in SEED_SPECS or model in registered_names()):
        return _registered_table(model, input_shape, num_classes)
    path = None if isinstance(model, Config) else Path(model)
    if path is not None and ((path.suffix.lower() in KERAS_SUFFIXES and path.is_file()) or path.is_dir()):
        return _file_table(path)
    cfg = model if isinstance(model, Config) else _config_or_layers(model)
    shape, classes = config_input(cfg, input_shape, num_classes)
    title = cfg.name or (Path(model).stem if not isinstance(model, Config) else "model")
    return _config_table(cfg.model, _checked_shape(title, classes, shape), classes, title)


def _checked_shape(title: str, classes: int, shape: Any) -> tuple:
    """``shape`` as a tuple of positive whole sizes: (C, H, W) as ``create_model`` checks it, or a flat input a
    layer list may take (e.g. (12,) for Dense layers alone).

    Raises:
        CnnlabError: a string, an empty shape, or a size that is not a whole number ≥ 1.
    """
    sizes = tuple(shape) if not isinstance(shape, str) else ()
    if not sizes or not all(type(v) is int and v >= 1 for v in sizes):
        raise CnnlabError(f"{title}: `input_shape` must be positive whole sizes like (1, 28, 28), got {shape!r}")
    return check_build_args(title, classes, sizes) if len(sizes) == 3 else sizes


def registered_names() -> list[str]:
    """Every registered model name, read without importing torch (equal to ``model_names()``)."""
    return [name for name, _ in catalog()]


def _seed_table(name: str, shape: Sequence[int], classes: int, title: str) -> str:
    """A tutorial model's table from its layer list, after the checks ``create_model`` makes."""
    shape = check_build_args(name, classes, shape)
    return spec_summary_text(seed_layers(name, classes), shape, num_classes=classes, title=title)


def _registered_table(name: str, input_shape: Sequence[int] | None, num_classes: int | None) -> str:
    # a tutorial model is registered by cnnlab.models.seeds (imported above) without the torch-built families
    meta = MODELS.get(name).meta if name in SEED_SPECS else model_meta(name)  # the latter loads torch's families
    classes = meta.num_classes if num_classes is None else num_classes
    shape = tuple(input_shape) if input_shape else meta.input_shape
    if name in SEED_SPECS:
        return _seed_table(name, shape, classes, name)
    # lazy: start-up time; only a model that is not a layer list is built and traced with torch (~1.2 s)
    from cnnlab.models.summary import summary_text

    return summary_text(create_model(name, num_classes=classes, input_shape=shape), shape, title=name)


def _object_table(model: Any, input_shape: Sequence[int] | None) -> str | None:
    """The traced table of an ``nn.Module`` (None: ``model`` is not one)."""
    # lazy: start-up time; a model object means torch is already imported, a name or a file must not import it
    from torch import nn

    from cnnlab.models.summary import summary_text

    if not isinstance(model, nn.Module):
        return None
    if input_shape is None:
        raise CnnlabError("`input_shape` (C, H, W) is needed to summarise a model object")
    return summary_text(model, tuple(input_shape), title=type(model).__name__)


def _file_table(path: Path) -> str:
    """The traced table of a Keras model file (its converted layers, with Keras's counts) or a run directory."""
    # lazy: start-up time; reading these files and building their models needs torch (~1.2 s)
    from cnnlab.models.keras import build_keras, read_keras
    from cnnlab.models.summary import summary_text
    from cnnlab.runs.loaded import load_run

    if path.is_dir():  # a run directory: its model at the input it was trained on
        loaded = load_run(path)
        return summary_text(loaded.model, loaded.input_shape, title=loaded.cfg.name or path.name)
    km = read_keras(path)
    return summary_text(build_keras(km), km.input_shape, title=km.name)


def _config_table(cfg: ModelConfig, shape: tuple, classes: int, title: str) -> str:
    """A config's model: a layer list (or a tutorial model named plainly) from its list, else built and traced."""
    plain = len(shape) == 3 and all(type(v) is int and v >= 1 for v in shape)  # else torch says what fails
    if cfg.layers is not None and plain:
        return spec_summary_text(list(cfg.layers), shape, num_classes=classes, title=title)
    if cfg.layers is None and cfg.name in SEED_SPECS and not cfg.options and not cfg.pretrained:
        return _seed_table(cfg.name, shape, classes, title)  # what build_model does for it, without building
    # lazy: start-up time; only a model that is not a layer list is built and traced with torch (~1.2 s)
    from cnnlab.models.build import build_model
    from cnnlab.models.summary import summary_text

    return summary_text(build_model(cfg, input_shape=shape, num_classes=classes), shape, title=title)


def _config_or_layers(source: str | Path) -> Config:
    path = Path(source).expanduser()
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        try:
            path = config_path(source)
        except CnnlabError:
            raise one_of("model", source, registered_names()) from None
    raw = read_yaml(path, allow_list=True)
    if not raw:  # else the defaults would summarise a model the file never names
        raise CnnlabError(f"{path} holds no config and no layer list; write one, e.g. a list of layers like "
                          "- {type: Dense, units: 10}")
    if isinstance(raw, list):  # a bare layer list
        raw = {"model": {"layers": raw}}
    return from_dict(Config, raw, "")


def config_input(cfg: Config, input_shape: Sequence[int] | None, num_classes: int | None) -> tuple[tuple, int]:
    """(C, H, W) and class count from the config's data section, unless given.

    Raises:
        CnnlabError: a dataset whose input cannot be told without ``input_shape``, or a folder whose classes
            cannot be counted (missing, unreadable, empty) without ``num_classes``.
    """
    ds = cfg.data.dataset
    if ds in DATASETS:
        info = DATASETS.get(ds)
        return tuple(input_shape or info.shape), len(info.classes) if num_classes is None else num_classes
    if ds.startswith("folder:") and (input_shape or cfg.data.image_size):
        shape = tuple(input_shape) if input_shape else (1 if cfg.data.grayscale else 3, cfg.data.image_size,
                                                        cfg.data.image_size)
        return shape, _folder_class_count(cfg) if num_classes is None else num_classes
    if input_shape is None:
        raise CnnlabError(f"cannot infer the input shape of dataset {ds!r}; give `input_shape` (or "
                          "data.image_size for a folder)")
    return tuple(input_shape), 10 if num_classes is None else num_classes


def _folder_class_count(cfg: Config) -> int:
    # lazy: start-up time; listing a folder's images needs Pillow, which no other summary reads
    from cnnlab.data.listing import folder_classes, folder_spec

    spec = folder_spec(cfg.data)
    if not spec.path.exists():
        raise CnnlabError(f"the config's classes come from its image folder {spec.path}, which does not exist here "
                          "(a relative path starts from the current folder); give `num_classes` to summarise "
                          "without it")
    try:
        classes = folder_classes(spec)
    except CnnlabError as exc:
        raise CnnlabError(f"the config's classes come from its image folder, which cannot be read ({exc}); "
                          "give `num_classes`") from None
    if not classes:
        raise CnnlabError(f"the config's image folder {spec.path} has no labelled images to count classes from; "
                          "give `num_classes`")
    return len(classes)
