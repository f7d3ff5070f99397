"""Library entry points behind the CLI: prepare data and model, train, evaluate a run.

Each CLI command parses its arguments into a :class:`Config` (or a run directory) and calls one function
here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import __version__
from cnnlab.config import Config, DataConfig, ModelConfig
from cnnlab.data.tensors import IMAGENET, ImageData, Normalizer, split
from cnnlab.errors import CnnlabError
from cnnlab.runs import RESULTS, SUMMARY, WEIGHTS, Run, default_run_dir
from cnnlab.train.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    NanGuard,
    ProgressBar,
    StopAtTarget,
    metric_name,
)
from cnnlab.train.checkpoint import load_into, load_weights_file
from cnnlab.train.metrics import Evaluation
from cnnlab.train.trainer import Trainer, evaluate, make_engine, seed_everything

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Data:
    """Prepared data of one experiment."""

    train: ImageData
    val: ImageData | None
    test: ImageData
    normalizer: Normalizer
    note: str  # one line describing what validates and tests
    report: Any = None  # folder datasets: the decode report (skipped files, imbalance)


def prepare_data(cfg: DataConfig, *, log: Log = _print, pretrained: bool = False) -> Data:
    """Loads (or decodes) the dataset, splits validation off and fixes the normaliser."""
    if cfg.dataset.startswith("folder:"):
        train, test, report = _folder_data(cfg, log)
        val, note = test, f"validating and testing on {len(test):,} held-out images (seed {cfg.split_seed})"
    else:
        from cnnlab.data.datasets import load_dataset

        train, test = load_dataset(cfg.dataset, cfg.data_dir)
        report = None
        if cfg.val_split:
            train, val = split(train, cfg.val_split, cfg.split_seed)
            note = f"validating on {len(val):,} held-out training images, testing on {len(test):,}"
        else:
            val, note = test, f"validating on the {len(test):,} test images each epoch (as the tutorials do)"
    return Data(train, val, test, make_normalizer(cfg.normalize, train, pretrained=pretrained), note, report)


def _folder_data(cfg: DataConfig, log: Log) -> tuple[ImageData, ImageData, Any]:
    from cnnlab.data.folder import FolderSpec, load_folder

    if not cfg.image_size:
        raise CnnlabError("folder datasets need data.image_size (e.g. --set data.image_size=50)")
    spec = FolderSpec(path=cfg.dataset[len("folder:"):], labels=cfg.labels, pattern=cfg.pattern, csv=cfg.csv,
                      image_size=cfg.image_size, grayscale=cfg.grayscale, resize=cfg.resize)
    loaded = load_folder(spec)
    for line in loaded.report.to_lines():
        log(line)
    val = cfg.val_split or 0.2
    train, test = split(loaded.data, val, cfg.split_seed, copy=False)  # rows of the memory-mapped cache
    return train, test, loaded.report


def make_normalizer(kind: str, train: ImageData, *, pretrained: bool = False) -> Normalizer:
    """The input normalisation: ``auto`` follows the weights (ImageNet statistics when pretrained)."""
    if kind == "auto":
        kind = "imagenet" if pretrained else "unit"
    if kind == "standard":
        return Normalizer.fit(train)
    if kind == "imagenet":
        if train.shape[0] == 1:  # one grey channel: the mean of ImageNet's channel statistics
            return Normalizer((sum(IMAGENET.mean) / 3,), (sum(IMAGENET.std) / 3,))
        return IMAGENET
    return Normalizer()


def build_model(cfg: ModelConfig, *, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The configured network for data of ``input_shape`` (C, H, W) with ``num_classes`` classes."""
    if cfg.layers:
        from cnnlab.models.spec import build_spec

        return build_spec(list(cfg.layers), input_shape=input_shape, num_classes=num_classes)
    if not cfg.name:
        raise CnnlabError("the config names no model; set model.name (see cnnlab models) or model.layers")
    from cnnlab.models import create_model

    options = dict(cfg.options)
    if cfg.pretrained:  # e.g. transform_input for weights ported from TensorFlow
        from cnnlab.models.pretrained import weight_spec

        options = {**weight_spec(cfg.name).builder_options, **options}
    try:
        return create_model(cfg.name, num_classes=num_classes, input_shape=input_shape, **options)
    except TypeError as exc:
        raise CnnlabError(f"model.options {cfg.options} do not fit model {cfg.name!r} ({exc})") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class TrainResult:
    run: Run
    history: list[dict[str, Any]]
    test: Evaluation | None
    stop_reason: str | None
    failed: str | None


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool | None = None,
    log: Log = _print,
) -> TrainResult:
    """Trains ``cfg`` into a run directory (new, or ``resume``d) and evaluates it on the test set."""
    t0 = time.perf_counter()
    if resume is not None:
        run = Run.open(resume)
        if not (run.checkpoints / "last").exists() and not (run.checkpoints / ".last.old").exists():
            raise CnnlabError(f"{run.path} has no checkpoint to resume from (it stopped before the first epoch ended)")
    else:
        run = Run.create(out or default_run_dir(cfg), overwrite=overwrite)
    run.write_config(cfg)
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg.data, log=log, pretrained=cfg.model.pretrained)
    engine = make_engine(cfg.train)
    model = build_model(cfg.model, input_shape=data.train.shape, num_classes=data.train.num_classes)
    from cnnlab.models.transfer import BackboneFreeze, prepare_transfer

    transfer = prepare_transfer(model, cfg.model, log)
    head = transfer.head
    augment = _augmenter(cfg)
    callbacks = _callbacks(cfg, progress)
    if cfg.model.freeze == "backbone":
        callbacks.insert(0, BackboneFreeze(head, cfg.model.freeze_epochs, log))
    trainer = Trainer(model, cfg.train, train_data=data.train, val_data=data.val, normalizer=data.normalizer,
                      engine=engine, augment=augment, callbacks=callbacks, checkpoint_dir=run.checkpoints,
                      head=head, backbone_lr=cfg.model.backbone_lr)
    if resume is not None:
        trainer.resume("last")
        run.write_history(trainer.history)
        log(f"Resuming {run.path} after epoch {trainer.epoch}/{trainer.epochs}")
    run.update_meta(
        cnnlab=__version__, torch=torch.__version__, status="running", dataset=cfg.data.dataset,
        input_shape=list(data.train.shape), classes=list(data.train.classes), normalizer=data.normalizer.to_dict(),
        engine={"device": str(engine.device), "precision": engine.precision, "channels_last": engine.channels_last,
                "threads": torch.get_num_threads()},
        params=count_params(model), command=" ".join(sys.argv))
    if data.report is not None:
        run.write_json("data_report.json", data.report.to_dict())
    log(f"Data: {data.train.name} {len(data.train):,} train images {data.train.shape}, {data.note}")
    log(f"Model: {cfg.model.name if not cfg.model.layers else 'layers from config'} - {count_params(model):,} params - "
        f"{engine.device.type} {engine.precision}{' channels_last' if engine.channels_last else ''} "
        f"{torch.get_num_threads()} threads - batch {cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr:g}")
    history_logger = _HistoryWriter(run)
    trainer.callbacks.append(history_logger)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        run.update_meta(status="interrupted")
        raise
    if trainer.failed:
        run.update_meta(status="failed", failure=trainer.failed)
        log(f"Stopped: {trainer.failed}")
        return TrainResult(run, trainer.history, None, trainer.stop_reason, trainer.failed)
    restored = False
    if cfg.callbacks.restore_best and (run.checkpoints / "best").exists():
        load_into(trainer.model, load_weights_file(run.checkpoints / "best" / "model.safetensors"), "checkpoints/best")
        log("Restored the weights of the best epoch")
        restored = True
    save_weights(trainer.model, run.file(WEIGHTS))
    if data.val is data.test and trainer.last_eval is not None and not restored and not cfg.train.tta:
        test = trainer.last_eval  # the last epoch already evaluated these weights on the test set
    else:
        test = evaluate(trainer.model, data.test, normalizer=data.normalizer, engine=engine,
                        batch_size=cfg.train.eval_batch_size, tta=cfg.train.tta)
    run.write_json(RESULTS, test.to_dict())
    _write_summary(run, trainer.model, data, test, trainer)
    run.update_meta(status="done", epochs=trainer.epoch, stop_reason=trainer.stop_reason,
                    wall_seconds=round(time.perf_counter() - t0, 2), test_acc=test.acc, test_loss=test.loss)
    if trainer.stop_reason:
        log(f"Stopped early: {trainer.stop_reason}")
    return TrainResult(run, trainer.history, test, trainer.stop_reason, None)


class _HistoryWriter(Callback):
    """Rewrites metrics.jsonl / history.csv after every epoch."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_epoch_end(self, trainer, metrics) -> None:  # noqa: D102
        if not trainer.failed:
            self.run.write_history(trainer.history)


def _callbacks(cfg: Config, progress: bool | None) -> list:
    cbs: list = [NanGuard()]
    if cfg.callbacks.stop_at:
        cbs.append(StopAtTarget.parse(cfg.callbacks.stop_at))
    monitor = metric_name(cfg.callbacks.monitor)
    if cfg.callbacks.early_stopping:
        cbs.append(EarlyStopping(monitor, cfg.callbacks.early_stopping, cfg.callbacks.min_delta))
    cbs.append(ModelCheckpoint(monitor))
    cbs.append(ProgressBar(live=progress))
    return cbs


def _augmenter(cfg: Config):
    from cnnlab.data.augment import Augmenter

    aug = Augmenter(cfg.data.augment)
    return aug if aug.enabled else None


def save_weights(model: nn.Module, path: Path) -> None:
    """Writes the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


def _write_summary(run: Run, model: nn.Module, data: Data, test: Evaluation, trainer: Trainer) -> None:
    from cnnlab.inspect.summary import summary_text

    lines = [summary_text(model, data.train.shape), ""]
    lines.append(f"Epochs: {trainer.epoch}  Test accuracy: {test.acc:.4f}  Test loss: {test.loss:.4f}")
    lines.append("Per-class accuracy:")
    lines += [f"  {c:<14} {a:.4f}" for c, a in test.per_class.items()]
    run.file(SUMMARY).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------ using a run


@dataclass
class LoadedRun:
    run: Run
    cfg: Config
    model: nn.Module
    normalizer: Normalizer
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]


def load_run(path: str | Path, *, weights: str = "final") -> LoadedRun:
    """A run's config, model with its trained weights (eval mode, CPU), normaliser and classes."""
    run = Run.open(path)
    cfg = run.read_config()
    meta = run.meta
    for key in ("input_shape", "classes", "normalizer"):
        if key not in meta:
            raise CnnlabError(f"{run.file('run.json')} lacks {key!r}; the run did not get past data preparation")
    shape = tuple(meta["input_shape"])
    classes = tuple(meta["classes"])
    model = build_model(cfg.model, input_shape=shape, num_classes=len(classes))
    src = run.checkpoints / "best" / "model.safetensors" if weights == "best" else run.weights_path()
    load_into(model, load_weights_file(src), str(src))
    model.eval()
    norm = Normalizer(tuple(meta["normalizer"]["mean"]), tuple(meta["normalizer"]["std"]))
    return LoadedRun(run, cfg, model, norm, classes, shape)


def evaluate_run(path: str | Path, *, data_dir: str | None = None, keep_probs: bool = False,
                 log: Log = _print) -> tuple[LoadedRun, Evaluation, ImageData]:
    """Re-evaluates a run's final model on its test set (same data config, optional other data dir)."""
    lr = load_run(path)
    dcfg = lr.cfg.data if data_dir is None else DataConfig(**{**lr.cfg.data.__dict__, "data_dir": data_dir})
    data = prepare_data(dcfg, log=lambda s: None, pretrained=lr.cfg.model.pretrained)
    engine = make_engine(lr.cfg.train)
    model = lr.model.to(engine.device, memory_format=torch.channels_last if engine.channels_last else torch.preserve_format)
    ev = evaluate(model, data.test, normalizer=lr.normalizer, engine=engine,
                  batch_size=lr.cfg.train.eval_batch_size, tta=lr.cfg.train.tta, keep_probs=keep_probs)
    return lr, ev, data.test


# ------------------------------------------------------------------------------------- packaged configs

CONFIGS = Path(__file__).parent / "configs"  # also reachable as configs/ at the repository root


def config_path(name: str | Path) -> Path:
    """A config file: an existing path, else a packaged config by name (``fashion_mnist_cnn``, ``fast/mnist``)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIGS / (str(name) if str(name).endswith((".yaml", ".yml")) else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    names = sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))
    raise CnnlabError(f"config file {name} not found; pass an existing YAML file or a packaged config: {', '.join(names)}")


def recipe_path(recipe: str, dataset: str) -> Path:
    """The packaged recipe ``configs/<recipe>/<dataset>.yaml`` (e.g. ``--recipe fast --dataset mnist``)."""
    path = CONFIGS / recipe / f"{dataset}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (CONFIGS / recipe).glob("*.yaml")) if (CONFIGS / recipe).is_dir() else []
        if not have:
            recipes = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "exercises")
            raise CnnlabError(f"unknown recipe {recipe!r}; valid: {', '.join(recipes)}")
        raise CnnlabError(f"recipe {recipe!r} has no config for dataset {dataset!r}; it has: {', '.join(have)}")
    return path


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"28,28,1"`` (Keras's H,W,C order) → (C, H, W)."""
    try:
        h, w, c = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise CnnlabError(f"--input-shape {text!r}: expected H,W,C like 28,28,1 or 224,224,3") from None
    if min(h, w, c) < 1:
        raise CnnlabError(f"--input-shape {text!r}: sizes must be positive")
    return c, h, w


def model_for_summary(source: str, input_shape: str | None, num_classes: int | None) -> tuple[nn.Module, tuple, str]:
    """A model to summarise from a registered name, a YAML config, or a YAML list of layers."""
    from cnnlab.config import read_yaml
    from cnnlab.data.datasets import DATASETS
    from cnnlab.models import create_model, model_names

    shape = parse_input_shape(input_shape) if input_shape else None
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        import yaml

        if not path.is_file():
            raise CnnlabError(f"{path} not found; pass a registered model name or an existing YAML file")
        raw = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else None
        if isinstance(raw, list):
            raw = {"model": {"layers": raw}}
        cfg = load_config_dict(read_yaml(path) if not isinstance(raw, dict) else raw)
        ds = cfg.data.dataset
        if shape is None:
            if ds not in DATASETS:
                raise CnnlabError(f"{path}: cannot infer the input shape of dataset {ds!r}; pass --input-shape H,W,C")
            shape = DATASETS.get(ds).shape
        classes = num_classes or (len(DATASETS.get(ds).classes) if ds in DATASETS else 10)
        return build_model(cfg.model, input_shape=shape, num_classes=classes), shape, cfg.name or path.stem
    if source not in model_names():
        from cnnlab.errors import one_of

        raise one_of("model", source, model_names())
    from cnnlab.models.seeds import SEED_SPECS

    if source in SEED_SPECS:
        shape = shape or SEED_SPECS[source][1]
        classes = num_classes or 10
    else:
        shape = shape or ((3, 299, 299) if source == "inception_v3" else (3, 224, 224))
        classes = num_classes or 1000
    return create_model(source, num_classes=classes, input_shape=shape), shape, source


def load_config_dict(raw: dict) -> Config:
    from cnnlab.config import from_dict

    return from_dict(Config, raw, "")


def augment_preview(cfg: Config, out: str | Path, *, n: int = 8, copies: int = 8, seed: int = 0) -> Path:
    """Writes a PNG grid: each row a training image, then ``copies`` augmented versions of it."""
    from cnnlab.data.augment import Augmenter, preview_grid
    from cnnlab.inspect.plots import image_grid, save_figure

    aug = Augmenter(cfg.data.augment)
    if not aug.enabled:
        raise CnnlabError("the config enables no augmentation; set data.augment keys (e.g. --set data.augment.hflip=true)")
    if n < 1 or copies < 1:
        raise CnnlabError("-n and --copies must be ≥ 1")
    data = prepare_data(cfg.data, log=lambda s: None)
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    sheet = preview_grid(data.train.images[pick], aug, n=n, copies=copies, seed=seed)
    c = data.train.shape[0]
    h, w = data.train.shape[1:]
    tiles = [sheet[r * h:(r + 1) * h, k * w:(k + 1) * w].transpose(2, 0, 1) for r in range(len(pick)) for k in range(copies + 1)]
    titles = ["original" if k == 0 else f"aug {k}" for _ in range(len(pick)) for k in range(copies + 1)]
    fig = image_grid(tiles, titles, cols=copies + 1, panel=1.2, suptitle=f"Augmentation preview: {cfg.name or 'config'}",
                     cmap="gray" if c == 1 else None)
    return save_figure(fig, out)
