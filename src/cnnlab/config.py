"""Experiment configuration: frozen dataclasses per concern, loaded from YAML plus ``--set`` overrides.

Every key is checked: an unknown key, a value of the wrong type or an invalid choice is a one-line error
naming the key and what is valid. ``to_dict`` gives the fully resolved config that a run directory stores,
and loading that file again gives an equal :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.data.augment import AugmentConfig
from cnnlab.errors import CnnlabError


def _choice(default: str, *choices: str):
    return field(default=default, metadata={"choices": (default, *choices)})


@dataclass(frozen=True)
class DataConfig:
    """What to train on.

    Attributes:
        dataset: a registered dataset (``cnnlab datasets list``) or ``folder:PATH`` for a folder of images.
        data_dir: a folder holding ``<dataset>/<official files>``; default ``$CNNLAB_DATA``, then the cache.
        val_split: 0 validates on the test set each epoch (as the tutorials do); a fraction in (0, 1) or a
            count (e.g. 10000 for tutorial 2's 50k/10k) holds that many training images out instead.
        split_seed: seed of the validation split.
        normalize: ``auto`` is ``imagenet`` with pretrained weights and ``unit`` otherwise; ``unit``
            divides by 255 (the tutorials); ``standard`` uses the training set's per-channel mean/std;
            ``imagenet`` the ImageNet statistics.
        image_size: resize folder images to this size (pixels, square); registered datasets keep theirs.
        grayscale: folder images as 1 channel (default: RGB).
        labels: folder labels from ``subfolders``, ``filename`` (with ``pattern``) or ``csv`` (default auto).
        pattern: regex whose first group is the label in a file name (``cat.123.jpg`` → cat by default).
        csv: a ``file,label`` CSV for folder datasets.
        resize: ``squash`` (plain resize) or ``crop`` (centre-crop to square first).
        augment: training-time augmentation (off by default).
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_split: float = 0.0
    split_seed: int = 0
    normalize: str = _choice("auto", "unit", "standard", "imagenet")
    image_size: int | None = None
    grayscale: bool = False
    labels: str = _choice("auto", "subfolders", "filename", "csv")
    pattern: str | None = None
    csv: str | None = None
    resize: str = _choice("squash", "crop")
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    """Which network.

    Attributes:
        name: a registered model (``cnnlab models``); ignored when ``layers`` is given.
        layers: a Keras-style layer list (see ``cnnlab.models.spec``) — edit it to do the exercises.
        options: extra keyword arguments for the registered builder (e.g. ``{dropout: 0.3}``).
        pretrained: start from the official ImageNet weights of ``name``.
        weights: a local weight file (.pth / .safetensors) to start from.
        freeze: ``backbone`` trains only the classifier head (transfer learning).
        freeze_epochs: with ``freeze: backbone``, unfreeze the backbone after this many epochs (fine-tuning;
            0 keeps it frozen for the whole run).
        backbone_lr: learning-rate multiplier for the backbone (fastai's discriminative rates); 1 trains
            everything at ``train.lr``.
    """

    name: str | None = "cnn_64x2"
    layers: tuple[dict, ...] | None = None
    options: dict = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None
    freeze: str | None = field(default=None, metadata={"choices": (None, "backbone")})
    freeze_epochs: int = 0
    backbone_lr: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per step.
        optimizer: adam, adamw, sgd (``momentum``, ``nesterov``) or rmsprop.
        lr: peak learning rate.
        momentum: SGD / RMSprop momentum.
        nesterov: Nesterov momentum for SGD.
        weight_decay: decay as the optimiser applies it (decoupled for adamw).
        l2: Keras-style L2 penalty ``l2 * sum(w**2)`` on conv/dense kernels, added to the loss.
        label_smoothing: cross-entropy label smoothing.
        schedule: constant, onecycle or cosine (per step, after ``warmup_epochs`` of linear warm-up).
        warmup_epochs: linear warm-up length (cosine / constant).
        seed: makes a CPU run repeatable (init, shuffling, dropout, augmentation).
        precision: auto (bf16 autocast where the CPU has AVX512-BF16/AMX or on CUDA), bf16 or fp32.
        channels_last: NHWC memory format for convolutions.
        eval_batch_size: batch size of evaluation.
        device: auto, cpu or cuda.
        threads: CPU threads (0 = one per available core).
        tta: test-time augmentation of the final test and ``cnnlab evaluate`` (per-epoch validation stays
            plain, as Keras's): ``hflip`` averages the flipped prediction.
    """

    epochs: int = 5
    batch_size: int = 32
    optimizer: str = _choice("adam", "adamw", "sgd", "rmsprop")
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    l2: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = _choice("constant", "onecycle", "cosine")
    warmup_epochs: float = 0.0
    seed: int = 0
    precision: str = _choice("auto", "bf16", "fp32")
    channels_last: bool = True
    eval_batch_size: int = 1000
    device: str = _choice("auto", "cpu", "cuda")
    threads: int = 0
    tta: str | None = field(default=None, metadata={"choices": (None, "hflip")})


@dataclass(frozen=True)
class CallbacksConfig:
    """When to stop and what to keep.

    Attributes:
        stop_at: stop once a metric reaches a target, e.g. ``[val_acc=0.91]`` or ``[loss=0.3]``
            (accuracies stop at ≥, losses at ≤; ``loss``/``acc`` mean the training values).
        early_stopping: patience in epochs without improvement of ``monitor`` (0 = off).
        monitor: metric for early stopping and the best checkpoint.
        min_delta: smallest change of ``monitor`` that counts as an improvement.
        restore_best: at the end, keep the weights of the best epoch (by ``monitor``).
    """

    stop_at: tuple[str, ...] = ()
    early_stopping: int = 0
    monitor: str = _choice("val_loss", "val_acc", "train_loss", "train_acc")
    min_delta: float = 0.0
    restore_best: bool = False


@dataclass(frozen=True)
class CompareConfig:
    """Variants that ``cnnlab compare`` runs from this config (training ignores this section).

    Attributes:
        vary: ``{key.path: [v1, v2, ...]}``; each value gives one variant (several keys: every combination).
        configs: other YAML files to run beside this one (paths relative to this file).
    """

    vary: dict = field(default_factory=dict)
    configs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """One experiment: data, model, training and callbacks."""

    name: str = ""
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


# ----------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), base: dict | None = None) -> Config:
    """Reads a YAML config (or starts from ``base`` / the defaults) and applies ``key.path=value`` overrides.

    Raises:
        CnnlabError: unreadable file, unknown key, wrong type or invalid choice.
    """
    raw: dict = dict(base or {})
    if path is not None:
        raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    return from_dict(Config, raw, "")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``, with one-line errors for missing or malformed files."""
    p = Path(path)
    if not p.is_file():
        raise CnnlabError(f"config file {p} not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise CnnlabError(f"config file {p}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise CnnlabError(f"config file {p} must hold a mapping (data:, model:, train:, ...), got {type(data).__name__}")
    return data


def apply_override(raw: dict, item: str) -> None:
    """Applies one ``a.b.c=value`` override in place; the value is parsed as YAML (``32``, ``true``, ``[1, 2]``)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise CnnlabError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=10")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    if parts[:2] == ["model", "layers"] and len(parts) > 2:
        _materialize_layers(raw)
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_index(node, part, parts[: i + 1])]
            continue
        if not isinstance(node, dict):
            raise CnnlabError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, parts)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise CnnlabError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise CnnlabError(f"--set {'.'.join(path)}: index {part} out of range (the list has {len(node)} items)")
    return int(part)


def _materialize_layers(raw: dict) -> None:
    """Lets ``--set model.layers.0.filters=32`` edit a model given by name: copy its layer list in."""
    model = raw.setdefault("model", {})
    if not isinstance(model, dict) or model.get("layers"):
        return
    from cnnlab.models.seeds import SEED_SPECS, seed_layers

    name = model.get("name", ModelConfig.name)
    if name not in SEED_SPECS:
        raise CnnlabError(f"--set model.layers...: model {name!r} is not defined by a layer list; "
                          f"use one of {', '.join(sorted(SEED_SPECS))} or give model.layers in the YAML")
    model["layers"] = seed_layers(name)


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Builds dataclass ``cls`` from a mapping, checking keys, types and choices recursively."""
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CnnlabError(f"{where} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise CnnlabError(f"unknown config key '{prefix}{unknown[0]}'; valid keys in {where}: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
        choices = f.metadata.get("choices")
        if choices is not None and kwargs[name] not in choices:
            shown = ", ".join("null" if c is None else str(c) for c in choices)
            raise CnnlabError(f"{prefix}{name}: {value!r} is not one of {shown}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except CnnlabError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CnnlabError(f"{key} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise CnnlabError(f"{key} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise CnnlabError(f"{key} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise CnnlabError(f"{key} expects a string, got {value!r}")
    if origin is tuple:
        items = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(items, (list, tuple)):
            raise CnnlabError(f"{key} expects a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}.{i}") for i, v in enumerate(items))
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise CnnlabError(f"{key} expects a mapping, got {value!r}")
    return value


def to_dict(cfg: Any) -> Any:
    """Plain YAML-ready data (tuples → lists) of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (what ``config.yaml`` in a run holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, width=110)


def replace(cfg: Config, **sections: Any) -> Config:
    """A copy with whole sections or top-level values replaced."""
    return dataclasses.replace(cfg, **sections)
