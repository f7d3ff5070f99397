"""The :class:`Trainer`: epochs of :func:`~cnnlab.training.epoch.train_one_epoch` and
:func:`~cnnlab.training.epoch.evaluate` with callbacks, checkpoints (at epoch ends and part-way through),
resume, and a clean stop on SIGTERM/SIGINT.

Each epoch visits the training images in an order fixed by (seed, epoch) alone (:func:`epoch_order`, like
PyTorch's ``DistributedSampler``), and augmentation draws from its own generator seeded from
(seed, epoch, rank); so a run resumed part-way through an epoch, or one process of a distributed run, finds
the same order, and augmentation never disturbs it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import ImageData, Normalizer, epoch_order, seed_of, shard
from cnnlab.errors import CnnlabError
from cnnlab.native.heap import keep_freed_memory
from cnnlab.training import distributed
from cnnlab.training.callbacks import HOOKS, Callback, StopTraining, overrides
from cnnlab.training.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.training.ema import WeightEMA
from cnnlab.training.engine import Engine
from cnnlab.training.epoch import EpochProgress, evaluate, train_one_epoch
from cnnlab.training.features import IDENTITY, FeatureCache
from cnnlab.training.metrics import Evaluation
from cnnlab.training.optim import lr_factor, make_optimizer, make_param_groups, set_lr

__all__ = ["EpochProgress", "Trainer", "TrainingInterrupted", "evaluate", "train_one_epoch"]


class TrainingInterrupted(KeyboardInterrupt):  # noqa: N818 - a KeyboardInterrupt, with what was saved
    """Training stopped on a signal (SIGTERM, SIGINT) after saving a checkpoint of the step it had reached.

    Attributes:
        signum: the signal.
        checkpoint: the folder written, or None (no checkpoint folder).
    """

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum, self.checkpoint = signum, checkpoint


class Trainer:
    """Runs epochs of ``train_one_epoch`` + ``evaluate`` with callbacks, checkpoints and resume.

    Args:
        model: the network; moved to the engine's device (and channels-last when the engine says so).
        cfg: the training section of the config.
        train_data: images to train on (uint8, resident or memory-mapped).
        val_data: images to validate on after each epoch, or None.
        normalizer: uint8 → model input.
        engine: device, precision and memory format.
        augment: batched augmentation of [0, 1] images, or None.
        callbacks: sorted by their ``order`` (stable); their ``state_key`` values must be unique.
        checkpoint_dir: where ``last``/``best`` checkpoints go (None: no checkpoints).
        param_groups: the optimiser's parameter groups (default: every trainable parameter at
            ``cfg.lr``); transfer learning passes head and backbone groups with their ``lr_scale``.
        rank: this process's rank in a distributed run (0 alone; rank 0 alone writes checkpoints).
        world_size: the number of processes sharing each epoch (1 alone). Above 1 the process group must be
            started (:func:`cnnlab.training.distributed.start`): the model trains wrapped in
            ``DistributedDataParallel``, each rank takes ``cfg.batch_size / world_size`` images per step, and
            metrics, stop decisions and signals are agreed among the ranks.
        features: train the head alone on cached features of the frozen backbone
            (:class:`~cnnlab.training.features.FeatureCache`: built at the first epoch, refused with a logged
            reason when the backbone is not deterministic); None: every epoch runs the whole model.

    Attributes:
        epoch: completed epochs.
        history: one metrics dict per completed epoch.
        stop_reasons: why training was asked to stop (callbacks add to it through :meth:`request_stop`).
        failure: why training failed (a :class:`StopTraining` with ``failed``), or None.
        last_eval: validation of the weights as they are after the last epoch.
        ema: the moving average of the weights (``cfg.ema`` > 0), or None. When there is one, it is what
            :meth:`evaluate` measures and what checkpoints keep as their weights (the weights being trained
            travel in the checkpoint's state, so that a resume continues exactly).
        progress: where the running epoch is (None between epochs).
        interrupt: set (e.g. by a signal handler) to a signal number: the trainer saves ``checkpoints/last``
            after the current step and raises :class:`TrainingInterrupted`.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        train_data: ImageData,
        val_data: ImageData | None,
        normalizer: Normalizer,
        engine: Engine,
        augment: Callable | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: Path | None = None,
        param_groups: list[dict] | None = None,
        rank: int = 0,
        world_size: int = 1,
        features: FeatureCache | None = None,
    ) -> None:
        self.cfg, self.engine, self.normalizer, self.augment = cfg, engine, normalizer, augment
        keep_freed_memory()  # no heap trim and regrow around each step's big blocks (native/heap.py)
        self.model = model.to(engine.device)
        if engine.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = WeightEMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.train_data = train_data.to(engine.device)
        self.val_data = val_data.to(engine.device) if val_data is not None else None
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        keys = [cb.state_key for cb in self.callbacks]
        if dup := next((k for i, k in enumerate(keys) if k in keys[:i]), None):
            raise CnnlabError(f"two callbacks share the state_key {dup!r} (their checkpoint state would collide); "
                              "give one of them another `state_key`")
        self._hooks = {h: [cb for cb in self.callbacks if overrides(cb, h)] for h in HOOKS}
        self.checkpoint_dir = checkpoint_dir
        groups = param_groups or make_param_groups(self.model, cfg)
        self.optimizer = make_optimizer(groups, cfg, engine.device)
        self.rank, self.world_size = rank, world_size
        self.features = features
        self.batch_size = distributed.per_rank_batch(cfg.batch_size, world_size)
        # the module that trains: DDP around the model (which stays what is saved, evaluated and inspected)
        self.net = distributed.wrap(self.model, engine, cfg.sync_bn) if world_size > 1 else self.model
        self.aug_generator = torch.Generator()  # reseeded from (seed, epoch, rank) at each epoch's start
        self.epochs = cfg.epochs
        n = len(train_data) // world_size  # each rank's share: perm[:N - N % W][rank::W]
        self.steps_per_epoch = n // self.batch_size + (n % self.batch_size > 1)
        if cfg.steps_per_epoch is not None:  # Keras's fit(steps_per_epoch): the first steps of each epoch's order
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch == 0:  # a last batch of one image is dropped (BatchNorm): no step would run
            raise CnnlabError(f"the training set has {n} image{'s' if n != 1 else ''}: no optimiser step can run; "
                              "give it at least 2 images (a smaller `data.val_split`, more data)")
        self.progress: EpochProgress | None = None  # set while an epoch runs (and in a mid-epoch checkpoint)
        self.interrupt: int | None = None  # a signal to stop on, after the current step
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.stop_reasons: list[str] = []
        self.failure: str | None = None
        self.lr = cfg.peak_lr
        self.last_eval: Evaluation | None = None

    # -------------------------------------------------------------------------------------- stopping

    def request_stop(self, reason: str) -> None:
        """Asks to stop after the current epoch (every callback still sees it); requests only accumulate."""
        self.stop_reasons.append(reason)

    @property
    def should_stop(self) -> bool:
        """Whether any callback asked to stop (OR of every request)."""
        return bool(self.stop_reasons)

    @property
    def stop_reason(self) -> str | None:
        """The first stop request's reason, or None."""
        return self.stop_reasons[0] if self.stop_reasons else None

    # -------------------------------------------------------------------------------------- the loop

    def dispatch(self, hook: str, *args: Any) -> None:
        """Calls ``hook`` on every callback that implements it, in ``order``."""
        for cb in self._hooks[hook]:
            getattr(cb, hook)(self, *args)

    def fit(self) -> list[dict[str, Any]]:
        """Trains from ``self.epoch`` to ``cfg.epochs`` (or a stop); returns the history."""
        self.dispatch("on_fit_start")
        try:
            while self.epoch < self.epochs and not self.should_stop:
                self._epoch()
        except StopTraining as stop:
            if not stop.failed:  # from a batch hook: keep the position reached, as a signal would
                self.stop_reasons.append(stop.reason)
                if self.progress is not None:
                    self.save_checkpoint("last")
            else:
                self.failure = stop.reason
        finally:
            self.dispatch("on_fit_end")
        return self.history

    def _epoch(self) -> None:
        self.model.train()
        if self.progress is None:  # a fresh epoch (a resumed one has its progress and augmentation stream)
            self.progress = EpochProgress.start(self.engine.device)
            self.aug_generator.manual_seed(seed_of(self.cfg.seed, self.epoch, self.rank, 1))
            if self.world_size > 1:  # dropout draws from the global stream: one per (seed, epoch, rank)
                torch.manual_seed(seed_of(self.cfg.seed, self.epoch, self.rank, 2))
        self.dispatch("on_train_epoch_start")
        start = time.perf_counter() - self.progress.seconds  # a resumed epoch counts the time before the stop
        total = self.epochs * self.steps_per_epoch
        base = self.epoch * self.steps_per_epoch
        scheduled = self.cfg.schedule != "constant" or self.cfg.warmup_epochs > 0
        lr_used = self.lr
        if scheduled:  # the rate of the next step (after a resume, on the possibly re-planned schedule)
            self.lr = set_lr(self.optimizer, self.cfg.peak_lr,
                             lr_factor(self.cfg, base + self.progress.step, total, self.steps_per_epoch))
            # the epoch records the rate of its first step, also when it was resumed part-way
            lr_used = self.cfg.peak_lr * lr_factor(self.cfg, base, total, self.steps_per_epoch)

        def batch_end(i: int, loss: torch.Tensor) -> None:
            if self.ema is not None:  # first: a checkpoint written by a callback below holds this step's average
                self.ema.update(self.model)
            if scheduled:  # per-step schedule: set the rate for the next step
                step = base + i + 1
                self.lr = set_lr(self.optimizer, self.cfg.peak_lr, lr_factor(self.cfg, step, total, self.steps_per_epoch))
            self.progress.seconds = time.perf_counter() - start  # kept in a part-way checkpoint
            self.dispatch("on_train_batch_end", i, loss)
            if self.world_size > 1:  # a signal seen by one rank stops every rank after this same step
                self.interrupt = distributed.any_rank(self.interrupt, self.engine.device)
            if self.interrupt is not None:
                raise TrainingInterrupted(self.interrupt, self.save_checkpoint("last"))

        order = shard(epoch_order(len(self.train_data), self.cfg.seed, self.epoch), self.rank, self.world_size)
        if self.cfg.steps_per_epoch is not None:
            order = order[:self.steps_per_epoch * self.batch_size]
        starts = self._hooks["on_train_batch_start"]
        net, data, normalizer = self.net, self.train_data, self.normalizer
        if self._cached():  # the head alone, on the frozen backbone's features (the same order, steps and rates)
            net, data, normalizer = self.features.tail, self.features.train, IDENTITY
        loss, acc = train_one_epoch(
            net, self.optimizer, data, batch_size=self.batch_size, normalizer=normalizer,
            engine=self.engine, generator=self.aug_generator, label_smoothing=self.cfg.label_smoothing,
            l2=self.cfg.l2, augment=self.augment, order=order, progress=self.progress,
            on_batch_start=(lambda i: self.dispatch("on_train_batch_start", i)) if starts else None,
            on_batch_end=batch_end, set_train_mode=False)
        if self.world_size > 1:  # the epoch's sums over every rank: each rank logs the same numbers
            loss, acc = distributed.epoch_metrics(self.progress)
        self.progress = None
        logs: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": loss, "train_acc": acc,
                                "val_loss": None, "val_acc": None}
        self.last_eval = None
        if self.validates(self.epoch) and math.isfinite(loss):
            self.last_eval = self._validate()
            logs.update(val_loss=self.last_eval.loss, val_acc=self.last_eval.acc)
        logs.update(seconds=time.perf_counter() - start, lr=lr_used)
        self.epoch += 1
        self.history.append(logs)
        for cb in self._hooks["on_train_epoch_end"]:
            try:
                cb.on_train_epoch_end(self, logs)
            except StopTraining as stop:
                if stop.failed:  # the failed epoch is not part of the run's record
                    self.history.pop()
                    self.epoch -= 1
                    raise
                self.request_stop(stop.reason)  # a plain stop: the later callbacks still record this epoch
        if self.world_size > 1:  # rank 0 decides (the ranks saw the same metrics; this makes it certain)
            self.stop_reasons = distributed.from_lead(self.stop_reasons)

    def validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) ends with a validation pass: there is validation data, and it is a
        ``validation_freq``-th epoch or the last planned one."""
        freq = self.cfg.validation_freq
        return self.val_data is not None and (epoch % freq == freq - 1 or epoch + 1 == self.epochs)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the moving average when ``cfg.ema`` is on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _cached(self) -> bool:
        """Whether this epoch trains on cached features (built here the first time; a signal while they are
        being computed saves the epoch's start and stops, as it would after a step)."""
        if self.features is None:
            return False
        use = self.features.ready(self.model, self.train_data, self.val_data, normalizer=self.normalizer,
                                  engine=self.engine, batch_size=self.batch_size,
                                  eval_batch_size=self.cfg.eval_batch_size, stop=lambda: self.interrupt is not None)
        if self.interrupt is not None:
            raise TrainingInterrupted(self.interrupt, self.save_checkpoint("last"))
        return use

    def _validate(self) -> Evaluation:
        """The epoch's validation: on the cached validation features when there are any, else the whole model."""
        # (with an EMA the average's head is what validates: through the whole averaged model)
        if self.features is not None and self.features.val is not None and self.ema is None:
            return evaluate(self.features.tail, self.features.val, normalizer=IDENTITY, engine=self.engine,
                            batch_size=self.cfg.eval_batch_size)
        return self.evaluate(self.val_data)

    def evaluate(self, data: ImageData, tta: str | None = None) -> Evaluation:
        """``data`` through :attr:`eval_model` (unwrapped), split among the ranks and summed when distributed."""
        run = distributed.evaluate_shared if self.world_size > 1 else evaluate
        return run(self.eval_model, data, normalizer=self.normalizer, engine=self.engine,
                   batch_size=self.cfg.eval_batch_size, tta=tta)

    # ------------------------------------------------------------------------------ state and resume

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights needed to continue exactly: optimiser, epoch and the position in it, RNGs,
        callbacks, history."""
        state = {
            "epoch": self.epoch,
            "history": self.history,
            "lr": self.lr,
            "optimizer": self.optimizer.state_dict(),
            "progress": self.progress.state_dict() if self.progress is not None else None,
            "aug_generator": self.aug_generator.get_state(),
            "world_size": self.world_size,
            "torch_rng": torch.get_rng_state(),
            "python_rng": _py_state(),
            "numpy_rng": _np_state(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
        }
        if self.ema is not None:  # the checkpoint's weights are the average; these are the ones that train on
            state["ema"] = self.ema.state_dict()
            state["train_weights"] = dict(self.model.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned, after the checkpoint's weights went into the model."""
        self._restore_weights(state)
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.lr = float(state["lr"])
        self.optimizer.load_state_dict(state["optimizer"])
        _restore_layouts(self.optimizer)
        progress = state.get("progress")
        self.progress = EpochProgress.from_state(progress, self.engine.device) if progress else None
        if self.progress is not None and self.rank > 0:  # the saved sums are every rank's: count them once
            self.progress = EpochProgress(self.progress.step, torch.zeros_like(self.progress.loss_sum),
                                          torch.zeros_like(self.progress.correct))
        if "aug_generator" in state:  # older checkpoints (epoch ends only) lack it: each epoch reseeds it anyway
            self.aug_generator.set_state(state["aug_generator"])
        elif self.progress is not None:
            raise CnnlabError("this part-way checkpoint has no augmentation stream (`aug_generator`) to continue "
                              "its epoch with (was state.json edited?); train the run again with `overwrite`")
        saved_world = int(state.get("world_size", 1))
        if progress and saved_world != self.world_size:
            raise CnnlabError(f"this checkpoint was taken part-way through an epoch by {saved_world} process(es); "
                              f"resume it with {saved_world} (an epoch's share of images depends on the number)")
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_py_restore(state["python_rng"]))
        np.random.set_state(_np_restore(state["numpy_rng"]))
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in saved:
                cb.load_state_dict(saved[cb.state_key])

    def _restore_weights(self, state: dict[str, Any]) -> None:
        """Splits the checkpoint's weights, loaded into the model, into the average and the trained weights."""
        if self.ema is not None:  # the model holds the checkpoint's weights: the average (or, saved without
            # EMA, the trained weights, from which a fresh average starts)
            self.ema.module.load_state_dict(self.model.state_dict())
            self.ema.load_state_dict(state.get("ema", {"updates": 0}))
        if "train_weights" in state:
            self.model.load_state_dict(state["train_weights"])

    def save_checkpoint(self, kind: str) -> Path | None:
        """Writes ``checkpoints/<kind>`` (last / best) when the trainer has a checkpoint folder; the ``last`` it
        replaces is kept as ``checkpoints/previous``."""
        if self.checkpoint_dir is None:
            return None
        keep = self.checkpoint_dir / "previous" if kind == "last" else None
        state = self.state_dict()
        if self.world_size == 1:
            return save_checkpoint(self.checkpoint_dir / kind, self.eval_model, state, keep_previous=keep)
        if self.progress is not None:  # part-way through an epoch: keep the sums of every rank
            state["progress"] = distributed.global_progress(self.progress).state_dict()
        path = save_checkpoint(self.checkpoint_dir / kind, self.eval_model, state, keep_previous=keep) if self.rank == 0 \
            else self.checkpoint_dir / kind
        distributed.barrier()  # outside the if: no rank reads or goes on before rank 0 has written
        return path

    def resume(self, kind: str = "last", log: Callable[[str], None] | None = None) -> None:
        """Restores model and training state from ``checkpoints/<kind>`` (or ``previous``, with a note to ``log``,
        when ``last`` is damaged)."""
        if self.checkpoint_dir is None:
            raise CnnlabError("this trainer has no checkpoint folder to resume from")
        fallback = self.checkpoint_dir / "previous" if kind == "last" else None
        self.load_state_dict(load_checkpoint(self.checkpoint_dir / kind, self.model, fallback=fallback, log=log))


def _restore_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives every per-parameter state tensor (Adam's moments, SGD's momentum) its parameter's memory layout.

    Checkpoints store tensors contiguous (safetensors has no strides), so the moments of a channels-last
    conv weight come back NCHW; a fused optimiser walks param, grad and state as flat memory and would pair
    the wrong elements. ``empty_like`` copies the parameter's strides, ``copy_`` the values.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_restore(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _np_restore(s: list) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])
