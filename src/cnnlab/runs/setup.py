"""What a config needs before it trains: the config resolved as the run records it, the callbacks it asks
for, and the trainer (model, initial weights, parameter groups, augmentation, engine) — shared by
:mod:`cnnlab.runs.experiment` (``cnnlab train``) and :mod:`cnnlab.runs.lr_find`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cnnlab.config import Config, parse_every
from cnnlab.config.schema import DEFAULT_LR
from cnnlab.data.augment import Augmenter
from cnnlab.data.prepare import Data
from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.models.build import build_model, model_meta_for
from cnnlab.models.pretrained import has_published_layout, head_parameters, load_initial_weights
from cnnlab.models.registry import model_meta, model_names
from cnnlab.runs.launch import rank_threads
from cnnlab.runs.loggers import MLflowLogger, TensorBoardLogger
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.callbacks import (
    Callback,
    CheckpointEvery,
    EarlyStopping,
    ModelCheckpoint,
    NanGuard,
    StallWarning,
    StopAtTarget,
    resolve_mode,
)
from cnnlab.training.distributed import Place
from cnnlab.training.engine import make_engine
from cnnlab.training.features import KEY as CACHE_KEY
from cnnlab.training.features import FeatureCache
from cnnlab.training.optim import make_param_groups
from cnnlab.training.progressbar import ProgressBar
from cnnlab.training.trainer import Trainer
from cnnlab.training.transfer import BackboneFreeze

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def resolve_config(cfg: Config, log: Log | None = None) -> Config:
    """The config as the run records it: a folder dataset's path (and ``data.data_dir``) made absolute, so the
    run works from any folder; an unset ``train.lr`` given the model's rate (:func:`default_lr`); a
    ``model.weights`` file in the model's published ImageNet layout treated as those weights
    (``model.pretrained``: their preprocessing, :func:`weights_preprocessing`); a folder without
    ``data.image_size`` given the model's (or the weights') input size. ``log`` receives a note on each."""
    say = log or (lambda s: None)
    if cfg.train.lr is None:
        rate, source = default_lr(cfg)
        say(f"note: train.lr is not set: using {rate:g}, {source}; set train.lr to choose another")
        cfg = replace(cfg, train=replace(cfg.train, lr=rate))
    cfg = weights_preprocessing(cfg, say)
    data = cfg.data
    if data.dataset.startswith("folder:"):
        folder = Path(data.dataset[len("folder:"):]).expanduser()
        data = replace(data, dataset=f"folder:{folder.resolve()}")
        if not data.image_size and cfg.model.name and not cfg.model.layers:
            meta = model_meta(cfg.model.name)
            size = meta.weights.input_size if cfg.model.pretrained and meta.weights else meta.input_shape[1]
            data = replace(data, image_size=size)
    if data.data_dir:
        data = replace(data, data_dir=str(Path(data.data_dir).expanduser().resolve()))
    return replace(cfg, data=data)


def weights_preprocessing(cfg: Config, log: Log) -> Config:
    """A ``model.weights`` file's preprocessing: the family's published one when the file has their layout, else
    ``data.normalize`` as it is, said in a note (when it is ``auto``) with how to change it.

    A file laid out as the registered model's published ImageNet weights (torchvision's file, renamed or
    copied) sets ``model.pretrained``: ``pretrained`` with a ``weights`` file means "the published weights,
    from this file", so the run gets what ``--pretrained`` gives: the weights' mean/std (``data.normalize``
    auto), their builder options (``transform_input`` for GoogLeNet and Inception v3) and input size.
    """
    model = cfg.model
    if not model.weights or model.pretrained:
        return cfg
    name = model.name if not model.layers else None
    if name and model_meta(name).weights is not None and has_published_layout(name, model.weights):
        w = model_meta(name).weights
        extra = ", transform_input" if w.builder_options else ""
        log(f"note: {model.weights} has {name}'s published ImageNet layout, so it gets their preprocessing as "
            f"model.pretrained does: mean {list(w.mean)} / std {list(w.std)}{extra}, {w.input_size} px input "
            "(data.normalize and data.image_size change them)")
        return replace(cfg, model=replace(model, pretrained=True))
    if cfg.data.normalize == "auto":
        whose = f"{name}'s" if name else "a"
        log(f"note: {model.weights} is not {whose} published ImageNet weight file, so inputs are scaled as for "
            "training from scratch (x / 255); if these weights expect other statistics, set data.normalize "
            "(imagenet, standard)")
    return cfg


def default_lr(cfg: Config) -> tuple[float, str]:
    """The learning rate for a config that leaves ``train.lr`` unset, and where it comes from.

    "Unset" is ``train.lr: None`` (the schema's default; YAML ``lr: null``): any value the user writes, even
    0.001, is theirs and is kept. The rate then comes from the registered model's metadata (``ModelMeta.lr``,
    an Adam rate, so for ``adam``/``adamw`` only), else it is :data:`~cnnlab.config.schema.DEFAULT_LR`.
    """
    name = cfg.model.name if not cfg.model.layers else None
    if name and cfg.train.optimizer in ("adam", "adamw"):
        rate = model_meta(name).lr
        if rate is not None:
            return rate, f"{name}'s default for {cfg.train.optimizer} (its metadata)"
    return DEFAULT_LR, "the default"


def weights_normalizer(cfg: Config) -> Normalizer | None:
    """The normalisation the published weights of ``model.pretrained`` expect (their metadata), else None."""
    if not cfg.model.pretrained or cfg.model.layers or not cfg.model.name:
        return None
    meta = model_meta(cfg.model.name)
    return Normalizer(meta.mean, meta.std) if meta.weights else None


def build_trainer(cfg: Config, data: Data, callbacks: list[Callback], checkpoint_dir: Path | None,
                  log: Log = _print, place: Place | None = None) -> Trainer:
    """The model with its initial weights (``model.pretrained`` / ``model.weights``), its parameter groups and
    backbone freezing (transfer learning), the augmentation and the engine: a :class:`Trainer` for ``cfg``.

    Args:
        cfg: the experiment (resolved: see :func:`resolve_config`).
        data: its prepared data.
        callbacks: the trainer's callbacks (a frozen backbone adds its own).
        checkpoint_dir: where checkpoints go (None: none are written).
        log: receives notes about the initial weights and freezing.
        place: this process's rank and world (None: a single process).
    """
    model = build_model(cfg.model, input_shape=data.train.shape, num_classes=data.train.num_classes)
    report = load_initial_weights(model, cfg.model, log)
    callbacks = list(callbacks)
    groups, features = None, None
    if cfg.model.freeze or cfg.model.backbone_lr != 1.0:
        meta = model_meta_for(cfg.model, data.train.shape, data.train.num_classes)
        head = head_parameters(model, meta, report)
        groups = make_param_groups(model, cfg.train, head=head, backbone_lr=cfg.model.backbone_lr)
        if cfg.model.freeze == "backbone":
            callbacks.append(BackboneFreeze(head, cfg.model.freeze_epochs, log, train_bn=cfg.model.train_bn))
            features = feature_cache(cfg, meta.head, log)
    elif cfg.train.cache_features == "on":
        raise CnnlabError(f"{CACHE_KEY} is on but nothing is frozen: set `model.freeze` to backbone (or "
                          f"{CACHE_KEY} to auto)")
    engine = make_engine(cfg.train)
    if place is not None:
        rank_threads(place, cfg.train.threads)
    return Trainer(model, cfg.train, train_data=data.train, val_data=data.val, normalizer=data.normalizer,
                   engine=engine, augment=_augmenter(cfg, data.train.shape), callbacks=callbacks,
                   checkpoint_dir=checkpoint_dir, param_groups=groups,
                   rank=place.rank if place else 0, world_size=place.world_size if place else 1, features=features)


def feature_cache(cfg: Config, head: str, log: Log) -> FeatureCache | None:
    """The cache of a frozen backbone's features (:mod:`cnnlab.training.features`) when ``train.cache_features``
    asks for it and the config keeps the backbone's output the same every epoch; else None, with one note
    saying why (``auto``).

    Raises:
        CnnlabError: ``train.cache_features: on`` where the config rules the cache out.
    """
    mode = cfg.train.cache_features
    if mode == "off":
        return None
    reason = None
    if cfg.model.freeze_epochs:
        reason = f"the backbone is unfrozen after epoch {cfg.model.freeze_epochs} (`model.freeze_epochs`)"
    elif cfg.model.train_bn:
        reason = "its BatchNorm layers keep training (`model.train_bn`)"
    elif Augmenter(cfg.data.augment).enabled:
        reason = "`data.augment` changes the images every epoch"
    if reason is None:
        return FeatureCache(head, required=mode == "on", log=log)
    if mode == "on":
        raise CnnlabError(f"{CACHE_KEY} is on but the backbone's features change from epoch to epoch: {reason}; "
                          f"set {CACHE_KEY} to auto or off")
    log(f"note: the frozen backbone's features are recomputed every epoch: {reason}")
    return None


def build_callbacks(cfg: Config, progress: bool | None = None, log: Log = _print,
                    run: RunDir | None = None) -> list[Callback]:
    """The callbacks a config asks for: NaN guard, stop-at targets, early stopping, checkpoints (at epoch ends and
    every ``callbacks.checkpoint_every``), progress, the stall warning, and with a run directory the TensorBoard /
    MLflow loggers (:mod:`cnnlab.runs.loggers`)."""
    cb = cfg.callbacks
    mode = resolve_mode(cb.monitor, cb.mode)
    callbacks: list[Callback] = [NanGuard(), *(StopAtTarget.parse(item) for item in cb.stop_at)]
    if cb.early_stopping:
        callbacks.append(EarlyStopping(cb.monitor, mode, cb.early_stopping, cb.min_delta))
    callbacks.append(ModelCheckpoint(cb.monitor, mode, cb.min_delta))
    every = parse_every(cb.checkpoint_every, "callbacks.checkpoint_every")
    if every is not None:
        kind, amount = every
        callbacks.append(CheckpointEvery(steps=int(amount)) if kind == "steps" else CheckpointEvery(seconds=amount))
    callbacks += [ProgressBar(live=progress, log=log), StallWarning(log, stall_advice(cfg))]
    if run is not None and cb.tensorboard:
        callbacks.append(TensorBoardLogger(run.path, cb.log_every_n_steps))
    if run is not None and cb.mlflow:
        callbacks.append(MLflowLogger(cb.mlflow, run, cfg, cb.log_every_n_steps))
    return callbacks


def stall_advice(cfg: Config) -> str:
    """What to change when this config's model collapses: a lower rate, a BatchNorm variant, pretrained weights."""
    lr = cfg.train.peak_lr
    fixes = [f"lower train.lr (e.g. {lr / 10:g}; an LR range test, cnnlab lr-find, shows where it learns)"]
    name = cfg.model.name if not cfg.model.layers else None
    if name and not name.endswith("_bn") and f"{name}_bn" in model_names():
        fixes.append(f"use the BatchNorm variant {name}_bn")
    if name and model_meta(name).weights is not None and not cfg.model.pretrained and not cfg.model.weights:
        fixes.append("start from the ImageNet weights (model.pretrained)")
    elif cfg.model.layers:
        fixes.append("add BatchNormalization layers")
    return ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1]


def _augmenter(cfg: Config, shape: tuple[int, int, int]) -> Augmenter | None:
    aug = Augmenter(cfg.data.augment)
    if not aug.enabled:
        return None
    aug.check(shape)
    return aug
