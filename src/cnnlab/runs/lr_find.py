"""The learning-rate range test: where on the scale of rates a model starts to learn, and where it diverges.

Leslie N. Smith, "Cyclical Learning Rates for Training Neural Networks" (WACV 2017, section 3.3), as fastai's
``Learner.lr_find`` and Lightning's ``Tuner.lr_find`` run it: a fresh model (with the config's initial
weights, freezing, augmentation and optimiser) trains for ``steps`` optimiser steps while the rate grows
exponentially from ``start_lr`` to ``end_lr``; the loss of each step is smoothed (an exponential moving
average with bias correction, β = 0.98, fastai's) and the test stops early once the smoothed loss exceeds
4x its minimum (fastai's ``stop_div``). The suggested rate is Lightning's: the steepest descent of the
smoothed loss against log(rate), leaving out the first 10 steps, the last one and those after the lowest
loss. Nothing is saved: the model is thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from cnnlab.config import Config
from cnnlab.data.prepare import prepare_data
from cnnlab.data.tensors import seed_of
from cnnlab.errors import CnnlabError
from cnnlab.runs.setup import build_trainer, resolve_config, weights_normalizer
from cnnlab.training.engine import seed_everything
from cnnlab.training.epoch import train_one_epoch
from cnnlab.training.optim import set_lr

Log = Callable[[str], None]
SMOOTHING = 0.98  # fastai's beta
DIVERGE = 4.0  # stop once the smoothed loss is this many times its minimum (fastai's stop_div)
SKIP_BEGIN, SKIP_END = 10, 1  # Lightning's suggestion() leaves these steps out


@dataclass
class LrFinding:
    """What a range test measured.

    Attributes:
        lrs: the rate of each step.
        losses: each step's training loss.
        smoothed: the losses smoothed (the curve the suggestion is read from).
        suggestion: the rate at the steepest descent of the smoothed loss (None: too few steps to tell).
        min_lr: the rate of the lowest smoothed loss (fastai's ``lr_min`` is a tenth of it).
        stop: why the test ended (``diverged`` or ``end_lr reached``).
        name: what was tested (config name or model).
    """

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None
    min_lr: float | None = None
    stop: str = "end_lr reached"
    name: str = ""

    def summary(self) -> str:
        """One line: the suggested rate and how it was found."""
        if self.suggestion is None:
            return (f"no suggestion: the loss did not fall for long before it diverged or the test ended "
                    f"({len(self.lrs)} steps, to lr {self.lrs[-1]:.2g}); lower `start_lr` or raise `steps`")
        return (f"suggested learning rate {self.suggestion:.2g} (steepest descent of the loss; lowest loss at "
                f"{self.min_lr:.2g}, so fastai's lr_min would be {self.min_lr / 10:.2g}); {len(self.lrs)} steps, "
                f"{self.stop}")


class _Done(Exception):  # noqa: N818 - control flow: the range test has its points
    pass


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """fastai's exponential moving average with bias correction: ``avg / (1 - beta**(i + 1))``."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """Lightning's suggestion: the rate where the smoothed loss falls fastest against log(rate), the first
    ``SKIP_BEGIN`` and last ``SKIP_END`` points left out; None with fewer than 3 points left.

    Only the descent counts: points after the lowest smoothed loss are left out too. Past it the loss is
    rising, and with Adam it often wanders there without reaching the 4x stop; a dip in that noise can be the
    steepest slope of the whole curve, yet it is no rate to train at (it would suggest ~10 for a net whose
    loss is lowest near 0.01)."""
    stop = min(len(smoothed) - SKIP_END, int(np.argmin(smoothed)) + 1)
    if stop - SKIP_BEGIN < 3:
        return None
    part = np.asarray(smoothed[SKIP_BEGIN:stop], float)
    grad = np.gradient(part, np.log(np.asarray(lrs[SKIP_BEGIN:stop], float)))
    return float(lrs[SKIP_BEGIN + int(np.argmin(grad))])


def lr_find(cfg: Config, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            log: Log = print) -> LrFinding:
    """Runs the range test on ``cfg``'s model, data and optimiser (``train.lr`` and the schedule are ignored).

    Args:
        cfg: the experiment.
        start_lr: the first step's rate.
        end_lr: the last step's rate (the test usually diverges before it).
        steps: optimiser steps (fastai and Lightning use 100); the data repeats if one epoch is shorter.
        log: receives the data and model lines of the preparation.

    Raises:
        CnnlabError: bad rates or steps, and anything :func:`cnnlab.runs.experiment.train` would refuse in the
            config or data.
    """
    if not 0 < start_lr < end_lr or not math.isfinite(end_lr):
        raise CnnlabError(f"`start_lr` {start_lr:g} and `end_lr` {end_lr:g}: need 0 < start_lr < end_lr")
    if steps < SKIP_BEGIN + SKIP_END + 3:
        raise CnnlabError(f"`steps` is {steps}; the test needs at least {SKIP_BEGIN + SKIP_END + 3} (100 is usual)")
    if cfg.train.lr is None:  # the test sets every step's rate itself: no default rate to choose or announce
        cfg = replace(cfg, train=replace(cfg.train, lr=start_lr))
    cfg = resolve_config(cfg, log)
    seed_everything(cfg.train.seed)
    data = prepare_data(cfg.data, log=log, weights=weights_normalizer(cfg))
    trainer = build_trainer(cfg, data, [], None, log)
    found = LrFinding(name=cfg.name or cfg.model.name or "model")
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))

    def before(i: int) -> None:
        found.lrs.append(set_lr(trainer.optimizer, start_lr * gamma ** len(found.lrs), 1.0))

    def after(i: int, loss) -> None:
        found.losses.append(float(loss))  # one sync per step: 100 steps, cheap beside the steps themselves
        found.smoothed = smooth(found.losses)
        last, best = found.smoothed[-1], min(found.smoothed)
        if not math.isfinite(last) or (len(found.losses) > SKIP_BEGIN and last > DIVERGE * best):
            found.stop = "diverged"
            raise _Done
        if len(found.losses) >= steps:
            raise _Done

    trainer.aug_generator.manual_seed(seed_of(cfg.train.seed, 0, 0, 1))  # the augmentation stream of epoch 1
    trainer.dispatch("on_fit_start")  # a frozen backbone freezes here
    try:
        while True:
            trainer.model.train()
            trainer.dispatch("on_train_epoch_start")
            train_one_epoch(trainer.model, trainer.optimizer, trainer.train_data, batch_size=cfg.train.batch_size,
                            normalizer=trainer.normalizer, engine=trainer.engine, generator=trainer.aug_generator,
                            label_smoothing=cfg.train.label_smoothing, l2=cfg.train.l2, augment=trainer.augment,
                            on_batch_start=before, on_batch_end=after, set_train_mode=False)
    except _Done:
        pass
    finite = [(lr, s) for lr, s in zip(found.lrs, found.smoothed, strict=True) if math.isfinite(s)]
    found.min_lr = min(finite, key=lambda p: p[1])[0] if finite else None
    keep = len(finite)
    found.suggestion = suggest(found.lrs[:keep], found.smoothed[:keep])
    return found
