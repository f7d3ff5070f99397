"""The experiment that ``cnnlab train`` runs: config → data, model, trainer → a finished run directory."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab._version import __version__
from cnnlab.config import Config
from cnnlab.data.augment import Augmenter
from cnnlab.data.prepare import Data, prepare_data
from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, write_atomic
from cnnlab.models.build import build_model, count_params, model_meta_for
from cnnlab.models.pretrained import head_parameters, load_initial_weights
from cnnlab.models.registry import model_meta
from cnnlab.models.summary import summary_text
from cnnlab.models.weights import load_into, load_weights_file
from cnnlab.runs.history import HistoryWriter
from cnnlab.runs.progress import RunProgress
from cnnlab.runs.run_dir import RESULTS, SUMMARY, WEIGHTS, RunDir, default_run_dir
from cnnlab.training.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    NanGuard,
    ProgressBar,
    StopAtTarget,
    resolve_mode,
)
from cnnlab.training.engine import make_engine, seed_everything
from cnnlab.training.metrics import Evaluation
from cnnlab.training.optim import make_param_groups
from cnnlab.training.trainer import Trainer, evaluate
from cnnlab.training.transfer import BackboneFreeze

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class TrainResult:
    """What a training left.

    Attributes:
        run: the run directory.
        history: one metrics dict per completed epoch.
        test: the final test-set evaluation (None when the run failed).
        stop_reason: why training stopped early, or None.
        failed: why training failed (e.g. diverged), or None.
    """

    run: RunDir
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
    """Trains ``cfg`` into a run directory (new, or ``resume``d) and evaluates it on the test set.

    Args:
        cfg: the experiment.
        out: the run directory to create (default ``runs/<name>``, numbered when it exists).
        overwrite: replace an existing run directory at ``out``.
        resume: continue this run directory from its last checkpoint instead.
        progress: live progress bars (None: on a terminal or in Jupyter).
        log: receives one line per event (data, model, stops).

    Raises:
        CnnlabError: anything wrong with the config, the data or the run directory (one line, naming the
            config key); nothing is half-written.
    """
    t0 = time.perf_counter()
    run = _open_run(cfg, out, overwrite, resume)
    seed_everything(cfg.train.seed)
    cfg = with_model_defaults(cfg)
    data = prepare_data(cfg.data, log=log, weights=_weights_normalizer(cfg))
    trainer = _trainer(cfg, data, run, progress, log)
    if resume is not None:
        trainer.resume("last")
        run.write_history(trainer.history)
        log(f"Resuming {run.path} after epoch {trainer.epoch}/{trainer.epochs}")
    _record_start(run, cfg, data, trainer, log)
    try:
        trainer.fit()
    except KeyboardInterrupt:
        run.update_meta(status="interrupted")
        raise
    except BaseException as exc:
        run.update_meta(status="failed", failure=f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    if trainer.failure:
        run.update_meta(status="failed", failure=trainer.failure)
        log(f"Stopped: {trainer.failure}")
        return TrainResult(run, trainer.history, None, trainer.stop_reason, trainer.failure)
    test = _finish(run, cfg, data, trainer, log)
    run.update_meta(status="done", epochs=trainer.epoch, stop_reason=trainer.stop_reason,
                    wall_seconds=round(time.perf_counter() - t0, 2), test_acc=test.acc, test_loss=test.loss)
    if trainer.stop_reason:
        log(f"Stopped early: {trainer.stop_reason}")
    return TrainResult(run, trainer.history, test, trainer.stop_reason, None)


def with_model_defaults(cfg: Config) -> Config:
    """A folder dataset without ``data.image_size`` gets the registered model's input size (its metadata)."""
    if not cfg.data.dataset.startswith("folder:") or cfg.data.image_size or cfg.model.layers or not cfg.model.name:
        return cfg
    meta = model_meta(cfg.model.name)
    size = meta.weights.input_size if cfg.model.pretrained and meta.weights else meta.input_shape[1]
    return replace(cfg, data=replace(cfg.data, image_size=size))


def _weights_normalizer(cfg: Config) -> Normalizer | None:
    """The normalisation the published weights of ``model.pretrained`` expect (their metadata), else None."""
    if not cfg.model.pretrained or cfg.model.layers or not cfg.model.name:
        return None
    meta = model_meta(cfg.model.name)
    return Normalizer(meta.mean, meta.std) if meta.weights else None


def _open_run(cfg: Config, out: str | Path | None, overwrite: bool, resume: str | Path | None) -> RunDir:
    if resume is not None:
        run = RunDir.open(resume)
        if not (run.checkpoints / "last").exists() and not (run.checkpoints / ".last.old").exists():
            raise CnnlabError(f"{run.path} has no checkpoint to resume from (it stopped before the first epoch ended)")
    else:
        run = RunDir.create(out or default_run_dir(cfg), overwrite=overwrite)
    run.write_config(cfg)
    return run


def _trainer(cfg: Config, data: Data, run: RunDir, progress: bool | None, log: Log) -> Trainer:
    """The model with its initial weights, the callbacks and the trainer for ``cfg``."""
    model = build_model(cfg.model, input_shape=data.train.shape, num_classes=data.train.num_classes)
    report = load_initial_weights(model, cfg.model, log)
    callbacks = build_callbacks(cfg, progress)
    groups = None
    if cfg.model.freeze or cfg.model.backbone_lr != 1.0:
        meta = model_meta_for(cfg.model, data.train.shape, data.train.num_classes)
        head = head_parameters(model, meta, report)
        groups = make_param_groups(model, cfg.train, head=head, backbone_lr=cfg.model.backbone_lr)
        if cfg.model.freeze == "backbone":
            callbacks.append(BackboneFreeze(head, cfg.model.freeze_epochs, log))
    callbacks.append(HistoryWriter(run))
    callbacks.append(RunProgress(run))  # progress.json: live batch progress for the dashboard
    return Trainer(model, cfg.train, train_data=data.train, val_data=data.val, normalizer=data.normalizer,
                   engine=make_engine(cfg.train), augment=_augmenter(cfg), callbacks=callbacks,
                   checkpoint_dir=run.checkpoints, param_groups=groups)


def build_callbacks(cfg: Config, progress: bool | None = None) -> list[Callback]:
    """The callbacks a config asks for: NaN guard, stop-at targets, early stopping, checkpoints, progress."""
    cb = cfg.callbacks
    mode = resolve_mode(cb.monitor, cb.mode)
    callbacks: list[Callback] = [NanGuard(), *(StopAtTarget.parse(item) for item in cb.stop_at)]
    if cb.early_stopping:
        callbacks.append(EarlyStopping(cb.monitor, mode, cb.early_stopping, cb.min_delta))
    callbacks += [ModelCheckpoint(cb.monitor, mode, cb.min_delta), ProgressBar(live=progress)]
    return callbacks


def _augmenter(cfg: Config):
    aug = Augmenter(cfg.data.augment)
    return aug if aug.enabled else None


def _record_start(run: RunDir, cfg: Config, data: Data, trainer: Trainer, log: Log) -> None:
    engine, params = trainer.engine, count_params(trainer.model)
    run.update_meta(
        cnnlab=__version__, torch=torch.__version__, status="running", dataset=cfg.data.dataset,
        input_shape=list(data.train.shape), classes=list(data.train.classes), normalizer=data.normalizer.to_dict(),
        engine={"device": str(engine.device), "precision": engine.precision, "channels_last": engine.channels_last,
                "threads": torch.get_num_threads()},
        params=params, epochs_planned=trainer.epochs, monitor=cfg.callbacks.monitor,
        mode=resolve_mode(cfg.callbacks.monitor, cfg.callbacks.mode), command=" ".join(sys.argv),
        # what a runs table shows without parsing config.yaml (the dashboard): model, and best_epoch's min_delta
        model=cfg.model.name if not cfg.model.layers else None, model_layers=len(cfg.model.layers or ()),
        min_delta=cfg.callbacks.min_delta)
    if data.report is not None:
        run.write_json("data_report.json", data.report.to_dict())
    log(f"Data: {data.train.name} {len(data.train):,} train images {data.train.shape}, {data.note}")
    log(f"Model: {cfg.model.name if not cfg.model.layers else 'layers from config'} - {params:,} params - "
        f"{engine.device.type} {engine.precision}{' channels_last' if engine.channels_last else ''} "
        f"{torch.get_num_threads()} threads - batch {cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr:g}")


def _finish(run: RunDir, cfg: Config, data: Data, trainer: Trainer, log: Log) -> Evaluation:
    """Restores the best weights if asked, saves the final weights, evaluates on the test set, writes results."""
    restored = False
    if cfg.callbacks.restore_best and (run.checkpoints / "best").exists():
        load_into(trainer.model, load_weights_file(run.checkpoints / "best" / "model.safetensors"), "checkpoints/best")
        log("Restored the weights of the best epoch")
        restored = True
    save_weights(trainer.model, run.file(WEIGHTS))
    if data.val is data.test and trainer.last_eval is not None and not restored and not cfg.train.tta:
        test = trainer.last_eval  # the last epoch already evaluated these weights on the test set
    else:
        test = evaluate(trainer.model, data.test, normalizer=data.normalizer, engine=trainer.engine,
                        batch_size=cfg.train.eval_batch_size, tta=cfg.train.tta)
    run.write_json(RESULTS, test.to_dict())
    _write_summary(run, trainer.model, data, test, trainer.epoch)
    return test


def save_weights(model: nn.Module, path: Path) -> None:
    """Writes the model's state dict as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))


def _write_summary(run: RunDir, model: nn.Module, data: Data, test: Evaluation, epochs: int) -> None:
    lines = [summary_text(model, data.train.shape), ""]
    lines.append(f"Epochs: {epochs}  Test accuracy: {test.acc:.4f}  Test loss: {test.loss:.4f}")
    lines.append("Per-class accuracy:")
    lines += [f"  {c:<14} {a:.4f}" for c, a in test.per_class.items()]
    write_atomic(run.file(SUMMARY), "\n".join(lines) + "\n")
