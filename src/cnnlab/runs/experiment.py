"""The experiment that ``cnnlab train`` runs: config → data, model, trainer → a finished run directory."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cnnlab._version import __version__
from cnnlab.config import Config, flatten, to_dict
from cnnlab.data.prepare import Data, prepare_data, relocate
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, shell_word, write_atomic
from cnnlab.models.build import count_params
from cnnlab.models.summary import summary_text
from cnnlab.models.weights import load_into, load_weights_file
from cnnlab.runs.history import HistoryWriter
from cnnlab.runs.launch import check_launch, lead_decides, lead_first, process_group, spawn
from cnnlab.runs.loggers import publish
from cnnlab.runs.progress import RunProgress
from cnnlab.runs.run_dir import (
    META,
    RESULTS,
    SUMMARY,
    WEIGHTS,
    RunDir,
    RunLock,
    check_folder,
    default_run_dir,
)
from cnnlab.runs.setup import build_callbacks, build_trainer, resolve_config, weights_normalizer
from cnnlab.training.callbacks import (
    Callback,
    resolve_mode,
)
from cnnlab.training.distributed import Place, place_from_env
from cnnlab.training.engine import seed_everything
from cnnlab.training.metrics import Evaluation, format_accuracy
from cnnlab.training.trainer import Trainer, TrainingInterrupted

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def _silent(msg: str) -> None:
    """The log of ranks other than 0: only rank 0 prints."""


@dataclass
class TrainResult:
    """What a training left.

    Attributes:
        run: the run directory.
        history: one metrics dict per completed epoch.
        test: the final test-set evaluation (None when the run failed).
        stop_reason: why training stopped early, or None.
        failed: why training failed (e.g. diverged), or None.
        lead: whether this process is rank 0 of its job (the one that writes and prints; True alone).
    """

    run: RunDir
    history: list[dict[str, Any]]
    test: Evaluation | None
    stop_reason: str | None
    failed: str | None
    lead: bool = True


def train(
    cfg: Config,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool | None = None,
    log: Log = _print,
    callbacks: Sequence[Callback] = (),
    command: str | None = None,
) -> TrainResult:
    """Trains ``cfg`` into a run directory (new, or ``resume``d) and evaluates it on the test set.

    Args:
        cfg: the experiment.
        out: the run directory to create (default ``runs/<name>``, numbered when it exists).
        overwrite: replace an existing run directory at ``out``.
        resume: continue this run directory from its last checkpoint instead.
        progress: live progress bars (None: on a terminal or in Jupyter).
        log: receives one line per event (data, model, each epoch, stops).
        command: how the run was started, for run.json (the CLI passes its command line).
        callbacks: more callbacks (:class:`~cnnlab.training.callbacks.Callback`), run with the config's own in
            the order their ``order`` attributes give; their state is checkpointed under their ``state_key``.

    Distributed: with ``train.nproc`` N > 1 (and no launcher around), N processes are started here and rank
    0's result returned (``callbacks`` must then be picklable); under ``torchrun`` (``RANK``/``WORLD_SIZE`` in
    the environment) this process is one rank. Rank 0 alone writes the run directory and logs.

    Raises:
        CnnlabError: anything wrong with the config, the data or the run directory (one line, naming the
            config key); nothing is half-written.
    """
    t0 = time.perf_counter()
    if resume is not None and cfg.data.dataset.startswith("folder:") and cfg.data.data_dir:
        cfg = replace(cfg, data=relocate(cfg.data, cfg.data.data_dir))  # the images of a run that moved
    cfg = resolve_config(cfg, log)
    place = place_from_env()
    check_launch(cfg, place, log)
    if place is None and cfg.train.nproc > 1:
        return spawn(train, cfg.train.nproc, cfg, out=out, overwrite=overwrite, resume=resume, progress=progress,
                     callbacks=callbacks, command=command, log=log)
    lead = place is None or place.lead
    if not lead:
        log, progress = _silent, False
    with process_group(place, cfg.train.device, cfg.train.dist_timeout):
        # refused before any work; nothing is created yet
        run = lead_decides(place, lambda: _check_run(cfg, out, overwrite, resume))
        lock = RunLock(run.path).acquire() if resume is not None and lead else None  # one writer per run
        try:
            seed_everything(cfg.train.seed)
            data = lead_first(place, lambda: prepare_data(cfg.data, log=log, weights=weights_normalizer(cfg)))
            trainer = _trainer(cfg, data, run, progress, log, callbacks, place)
            discard = None  # a resumed run is never removed
            if resume is not None:
                _resume(run, cfg, trainer, log, lead)
            else:  # every check passed: only now does the run folder appear
                discard = lead and not run.path.is_dir()  # True: the folder is ours to remove again
                # locked before anything is replaced
                run = lead_first(place, lambda: RunDir.create(run.path, overwrite=overwrite, lock=True) if lead else run)
                lock = run.lock if lead else None
            with _stop_on_signals(trainer):
                _fit(run, cfg, data, trainer, log, command, lead=lead, discard=discard if lead else None)
            if trainer.failure:
                if lead:
                    run.update_meta(status="failed", failure=trainer.failure)
                log(f"Stopped: {trainer.failure}")
                return TrainResult(run, trainer.history, None, trainer.stop_reason, trainer.failure, lead)
            test = _finish(run, cfg, data, trainer, log, lead)
            if lead:
                run.update_meta(status="done", epochs=trainer.epoch, stop_reason=trainer.stop_reason,
                                wall_seconds=round(time.perf_counter() - t0, 2), test_acc=test.acc,
                                test_loss=test.loss)
                publish(run, [run.file(SUMMARY), run.file(RESULTS)], {"test_acc": test.acc, "test_loss": test.loss},
                        log)
            if trainer.stop_reason:
                log(f"Stopped early: {trainer.stop_reason}")
            return TrainResult(run, trainer.history, test, trainer.stop_reason, None, lead)
        finally:
            if lock is not None:
                lock.release()


def _resume(run: RunDir, cfg: Config, trainer: Trainer, log: Log, lead: bool = True) -> None:
    if lead and (removed := run.remove_temp_files()):  # half-written files of a killed writer (we hold the lock)
        log(f"note: removed {len(removed)} half-written file(s) left by an interrupted writer: {', '.join(removed)}")
    trainer.resume("last", log=log)
    if trainer.epoch >= cfg.train.epochs and trainer.progress is None:
        if run.meta.get("status") == "done":
            raise CnnlabError(f"{run.path} has already trained {trainer.epoch} epoch(s); to train on, set `epochs` "
                              f"above {trainer.epoch}")
        # stopped after its last epoch's checkpoint but before the final weights and test results
        log(f"note: all {trainer.epoch} epochs were trained before the stop; finishing the run (final weights, "
            "test evaluation)")
    if lead:
        _record_config_change(run, run.read_config(), cfg, trainer.epoch, log)
        run.write_history(trainer.history)
    before = int(run.meta.get("world_size", 1))
    if before != trainer.world_size:  # the state is global: only each process's share changes
        log(f"note: this run trained with {before} process(es) and continues with {trainer.world_size}; the global "
            "batch, the data order and the learning rate stay the same")
    where = f", batch {trainer.progress.step} of epoch {trainer.epoch + 1}" if trainer.progress else ""
    log(f"Resuming {run.path} after epoch {trainer.epoch}/{trainer.epochs}{where}")


def _fit(run: RunDir, cfg: Config, data: Data, trainer: Trainer, log: Log, command: str | None, *,
         lead: bool = True, discard: bool | None = None) -> None:
    """``trainer.fit()``, keeping run.json's status true whatever ends it (rank 0 writes it).

    ``discard`` is None for a resumed run (and on the other ranks); for a new one, a failure before anything was
    learned or saved removes what the run wrote (True: the folder too, False: its contents only, the folder was
    the user's).
    """
    update = run.update_meta if lead else (lambda **kw: None)
    try:
        if lead:
            run.write_config(cfg)
            _record_start(run, cfg, data, trainer, log, command)
        trainer.fit()
    except TrainingInterrupted as stop:
        name = signal.Signals(stop.signum).name
        where = f"epoch {trainer.epoch + 1}, batch {trainer.progress.step}" if trainer.progress else "an epoch's end"
        update(status="interrupted", interrupted_by=name)
        log(f"Stopped by {name} in {where}; saved {stop.checkpoint or 'nothing (no checkpoint folder)'}; "
            f"continue with: cnnlab train --resume {shell_word(run.path)}")
        raise
    except BaseException as exc:
        if discard is not None and not trainer.history:  # nothing learned yet: leave nothing half-made behind
            run.discard(keep_folder=not discard)
        elif isinstance(exc, KeyboardInterrupt):
            update(status="interrupted")
        else:
            update(status="failed", failure=f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGTERM and SIGINT (a scheduler's pre-emption, Ctrl-C) finish the current step, save
    ``checkpoints/last`` and stop (:class:`TrainingInterrupted`); a second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        trainer.interrupt = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C is a plain KeyboardInterrupt
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_run(cfg: Config, out: str | Path | None, overwrite: bool, resume: str | Path | None) -> RunDir:
    """The run directory to train into, checked but not created (see :meth:`RunDir.create`)."""
    if resume is not None:
        run = RunDir.open(resume)
        if not any((run.checkpoints / name).exists() for name in ("last", ".last.old", "previous")):
            raise CnnlabError(f"{run.path} has no checkpoint to resume from (it stopped before the first epoch ended)")
        return run
    path = Path(out).expanduser() if out else default_run_dir(cfg)
    check_folder(path, overwrite=overwrite, marker=META, what="run directory", resumable=True)
    return RunDir(path)


def _record_config_change(run: RunDir, old: Config, new: Config, epoch: int, log: Log) -> None:
    """Keeps, in run.json, which settings a resume changed after which epoch (config.yaml holds the latest)."""
    before, after = flatten(to_dict(old)), flatten(to_dict(new))
    changed = {k: [before.get(k), after.get(k)] for k in sorted(before.keys() | after.keys())
               if before.get(k) != after.get(k)}
    if not changed:
        return
    history = run.meta.get("config_changes", [])
    run.update_meta(config_changes=[*history, {"after_epoch": epoch, "changed": changed}])
    log("note: resuming with " + ", ".join(f"{k} {a!r} → {b!r}" for k, (a, b) in changed.items()))
    if "train.epochs" in changed and new.train.schedule != "constant":
        log(f"note: the {new.train.schedule} schedule is re-planned for {new.train.epochs} epochs; "
            f"epoch {epoch + 1} continues on the new plan")


def _cadence(freq: int, epochs: int) -> str:
    """When validation runs (``train.validation_freq``), as the data line says it."""
    if freq == 1:
        return ", each epoch"
    if freq >= epochs:
        return ", after the last epoch"
    return f", every {freq} epochs and after the last"


def _trainer(cfg: Config, data: Data, run: RunDir, progress: bool | None, log: Log,
             extra: Sequence[Callback] = (), place: Place | None = None) -> Trainer:
    """The trainer of a run (for this rank): :func:`build_trainer` with the config's callbacks (and ``extra``);
    rank 0 alone writes into ``run`` (history, progress.json for the dashboard, loggers)."""
    lead = place is None or place.lead
    callbacks = [*build_callbacks(cfg, progress, log, run if lead else None), *extra]
    if lead:  # one writer
        callbacks += [HistoryWriter(run), RunProgress(run)]
    return build_trainer(cfg, data, callbacks, run.checkpoints, log, place)


def _record_start(run: RunDir, cfg: Config, data: Data, trainer: Trainer, log: Log, command: str | None) -> None:
    engine, params = trainer.engine, count_params(trainer.model)
    run.update_meta(
        cnnlab=__version__, torch=torch.__version__, status="running", dataset=cfg.data.dataset,
        input_shape=list(data.train.shape), classes=list(data.train.classes), normalizer=data.normalizer.to_dict(),
        engine={"device": str(engine.device), "precision": engine.precision, "channels_last": engine.channels_last,
                "threads": torch.get_num_threads()},
        params=params, world_size=trainer.world_size, epochs_planned=trainer.epochs, monitor=cfg.callbacks.monitor,
        mode=resolve_mode(cfg.callbacks.monitor, cfg.callbacks.mode), min_delta=cfg.callbacks.min_delta,
        command=command or "Python: cnnlab.train / cnnlab.runs.experiment.train",
        # what a runs table shows without parsing config.yaml (the dashboard)
        model=cfg.model.name if not cfg.model.layers else None, model_layers=len(cfg.model.layers or ()))
    if data.report is not None:
        run.write_json("data_report.json", data.report.to_dict())
    log(f"Data: {data.train.name} {len(data.train):,} train images {data.train.shape}, {data.note}"
        + _cadence(cfg.train.validation_freq, trainer.epochs))
    log(f"Model: {cfg.model.name if not cfg.model.layers else 'layers from config'} - {params:,} params - "
        f"{engine.device.type} {engine.precision}{' channels_last' if engine.channels_last else ''} "
        f"{torch.get_num_threads()} threads - batch {cfg.train.batch_size}, {cfg.train.optimizer} lr {cfg.train.lr:g}"
        + (f" - {trainer.world_size} processes x batch {trainer.batch_size}" if trainer.world_size > 1 else ""))


def _finish(run: RunDir, cfg: Config, data: Data, trainer: Trainer, log: Log, lead: bool = True) -> Evaluation:
    """Restores the best weights if asked, saves the final weights, evaluates on the test set (every rank its
    share), writes results (rank 0)."""
    restored = False
    if trainer.ema is not None:  # the run keeps the averaged weights, the ones its epochs were validated on;
        trainer.ema.copy_to(trainer.model)  # from here the model holds them (and maybe the best epoch's next):
        trainer.ema = None  # evaluate and save the model
    if cfg.callbacks.restore_best and (run.checkpoints / "best").exists():
        load_into(trainer.model, load_weights_file(run.checkpoints / "best" / "model.safetensors"), "checkpoints/best")
        log("Restored the weights of the best epoch")
        restored = True
    if lead:
        save_weights(trainer.model, run.file(WEIGHTS))
    if data.val is data.test and trainer.last_eval is not None and not restored and not cfg.train.tta:
        test = trainer.last_eval  # the last epoch already evaluated these weights on the test set
    else:
        test = trainer.evaluate(data.test, tta=cfg.train.tta)
    if lead:
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
    lines += [f"  {c:<14} {format_accuracy(a)}" for c, a in test.per_class.items()]
    write_atomic(run.file(SUMMARY), "\n".join(lines) + "\n")
