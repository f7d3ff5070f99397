"""A finished (or stopped) run read back: its config, model with trained weights, normaliser and classes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.data.prepare import load_test_data, relocate
from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.io import shell_word
from cnnlab.models.build import build_model
from cnnlab.models.weights import load_into, load_weights_file
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.engine import make_engine
from cnnlab.training.metrics import Evaluation
from cnnlab.training.trainer import evaluate


@dataclass
class LoadedRun:
    run: RunDir
    cfg: Config
    model: nn.Module
    normalizer: Normalizer
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]


def load_run(path: str | Path, *, weights: str = "final") -> LoadedRun:
    """A run's config, model with its trained weights (eval mode, CPU), normaliser and classes.

    Raises:
        CnnlabError: not a run, a run that never got past data preparation, missing or damaged weights, or
            weights that are not finite (a diverged training: nothing computed from them would mean anything).
    """
    run = RunDir.open(path)
    cfg = run.read_config()
    meta = run.meta
    for key in ("input_shape", "classes", "normalizer"):
        if key not in meta:
            raise CnnlabError(f"{run.file('run.json')} lacks {key!r}; the run did not get past data preparation")
    shape = tuple(meta["input_shape"])
    classes = tuple(meta["classes"])
    model = build_model(cfg.model, input_shape=shape, num_classes=len(classes))
    for attempt in range(20):
        src = run.checkpoints / "best" / "model.safetensors" if weights == "best" else run.weights_path()
        before = _identity(src)
        try:
            state = load_weights_file(src, fix=_weights_fix(run, src))
            break
        except CnnlabError:
            # the same file still there is damaged; a file gone or replaced was a training swapping in a new
            # checkpoint (it may be back already, so "exists" alone cannot tell): look again
            if (before is not None and _identity(src) == before) or attempt == 19:
                raise
            time.sleep(0.01)
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CnnlabError(f"{src} holds non-finite weights (NaN/inf in {', '.join(broken[:3])}"
                          f"{' and more' if len(broken) > 3 else ''}): the training diverged; train again with a "
                          "lower `train.lr` (or warm-up)")
    load_into(model, state, str(src))
    model.eval()
    norm = Normalizer(tuple(meta["normalizer"]["mean"]), tuple(meta["normalizer"]["std"]))
    return LoadedRun(run, cfg, model, norm, classes, shape)


def _weights_fix(run: RunDir, src: Path) -> str:
    """What to do about damaged weights ``src``: use a checkpoint's copy that is there, else train again."""
    if src == run.file("model.safetensors"):
        for name in ("best", "last"):
            copy = run.checkpoints / name / "model.safetensors"
            if copy != src and copy.is_file():
                return (f"copy the {name} checkpoint's weights over it (cp {shell_word(copy)} {shell_word(src)}) "
                        "or train the run again")
    return "train the run again"


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``, or None when it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def evaluate_run(path: str | Path, *, data_dir: str | None = None, keep_probs: bool = False) -> tuple[LoadedRun, Evaluation, ImageData]:
    """Re-evaluates a run's final model on its test set (same data config, optional other data dir)."""
    lr = load_run(path)
    dcfg = relocate(lr.cfg.data, data_dir)
    test = load_test_data(dcfg)
    engine = make_engine(lr.cfg.train)
    model = lr.model.to(engine.device, memory_format=torch.channels_last if engine.channels_last else torch.preserve_format)
    ev = evaluate(model, test, normalizer=lr.normalizer, engine=engine,
                  batch_size=lr.cfg.train.eval_batch_size, tta=lr.cfg.train.tta, keep_probs=keep_probs)
    return lr, ev, test
