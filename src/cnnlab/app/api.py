"""The public Python face of cnnlab: what a notebook calls after ``import cnnlab``.

::

    import cnnlab
    run = cnnlab.train("fashion_mnist_cnn", epochs=3, dataset="fashion-mnist-sample", out="runs/nb")
    run                                   # in Jupyter: status, data, model, best epoch, test accuracy, curves
    run.evaluate().acc                    # test accuracy
    run.predict(["shoe.png"])             # top-k labels per file; uint8 arrays give probabilities
    run.show("feature-maps", images=[0, 7, 26])   # a matplotlib Figure, drawn inline
    run.report()                          # report.html
    cnnlab.summary("cnn_64x2")            # Keras's table: "Total params: 243,786"

The keyword arguments of :func:`train` mirror the CLI's training flags (``cnnlab train --help``); they are
defined once, in :mod:`cnnlab.runs.options`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.app.run import Run
from cnnlab.app.summary import summary
from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import create_model as _create
from cnnlab.models.registry import model_meta, model_names
from cnnlab.plots.common import save_figure
from cnnlab.plots.training import plot_lr_find
from cnnlab.runs.experiment import train as _train
from cnnlab.runs.lr_find import LrFinding
from cnnlab.runs.lr_find import lr_find as _lr_find
from cnnlab.runs.options import experiment_config, resume_config
from cnnlab.training.callbacks import Callback

__all__ = ["Run", "create_model", "list_models", "load_run", "lr_find", "summary", "train"]


def train(config: str | Path | Config | None = None, *, recipe: str | None = None, out: str | Path | None = None,
          overwrite: bool = False, resume: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
          progress: bool | None = None, log: Callable[[str], None] = print, callbacks: Sequence[Callback] = (),
          **options: Any) -> Run:
    """Trains an experiment into a run directory and returns the run.

    Args:
        config: a packaged config name (``fashion_mnist_cnn``), a YAML path, a :class:`~cnnlab.config.Config`,
            or None for the defaults.
        recipe: a packaged recipe (``fast``) for ``dataset`` instead of a config.
        out: the run directory (default ``runs/<name>``, numbered when taken).
        overwrite: replace an existing run directory at ``out``.
        resume: continue this run directory from its last checkpoint (``epochs=N`` extends it).
        overrides: config values by dotted key, like the CLI's ``--set`` (``{"train.lr": 0.01}``).
        progress: live progress bars (None: in a terminal or a notebook).
        log: receives one line per event (data, model, each epoch, stops).
        callbacks: your own :class:`~cnnlab.training.callbacks.Callback` objects, run beside the config's.
        **options: the CLI's training flags as keywords: ``model``, ``dataset``, ``epochs``, ``batch_size``,
            ``lr``, ``precision``, ``pretrained``, ``weights``, ``freeze``, ``fine_tune``, ``cache_features``,
            ``stop_at``,
            ``loggers`` (``"tensorboard"``, ``"mlflow"`` or both; the CLI's ``--log``), ``nproc`` (data-parallel
            processes on this machine; ``callbacks`` must then be picklable), ``sync_bn``, ``dist_timeout``,
            ``data_dir``.

    Returns:
        The trained :class:`Run` (also when training failed: ``run.status`` says so).

    Raises:
        CnnlabError: a bad config, option or value (naming the key), missing data, a taken ``out``.
    """
    pairs = list((overrides or {}).items())
    if resume is not None:
        refused = [n for n, v in (("config", config), ("recipe", recipe), ("out", out), ("overwrite", overwrite)) if v]
        cfg = resume_config(Run(resume).path, overrides=pairs, refused=refused, **options)
        return Run(_train(cfg, resume=resume, progress=progress, log=log, callbacks=callbacks).run.path)
    cfg = experiment_config(config, recipe=recipe, overrides=pairs, **options)
    return Run(_train(cfg, out=out, overwrite=overwrite, progress=progress, log=log, callbacks=callbacks).run.path)


def lr_find(config: str | Path | Config | None = None, *, recipe: str | None = None,
            overrides: Mapping[str, Any] | None = None, out: str | Path | None = "lr-find.png",
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, log: Callable[[str], None] = print,
            **options: Any) -> tuple[LrFinding, Path | None]:
    """The learning-rate range test (fastai's ``lr_find``) of an experiment: loss against rate, the
    suggested rate marked, drawn into a PNG. See :mod:`cnnlab.runs.lr_find` for the method.

    Args:
        config: as in :func:`train`.
        recipe: as in :func:`train`.
        overrides: as in :func:`train`.
        out: the PNG to write (None: no figure).
        start_lr: the first step's rate.
        end_lr: the last step's rate.
        steps: optimiser steps of the test.
        log: receives the preparation's lines.
        **options: the training options of :func:`train`, but not ``epochs``, ``lr`` or ``stop_at``: the test
            sets its own steps and rates.

    Returns:
        (what was measured, the PNG's path or None).

    Raises:
        CnnlabError: an option the test cannot use, or anything :func:`train` would refuse.
    """
    refused = [n for n in ("epochs", "lr", "stop_at") if options.get(n) not in (None, False, [])]
    if refused:
        raise CnnlabError(f"{', '.join(f'`{n}`' for n in refused)} cannot apply: the range test runs `steps` "
                          "optimiser steps at rates from `start_lr` to `end_lr`; drop it")
    # the test runs in this one process and writes no run: these would be silently ignored
    alone = [n for n in ("nproc", "loggers") if options.get(n) not in (None, 1, [])]
    if alone:
        raise CnnlabError(f"{', '.join(f'`{n}`' for n in alone)} cannot apply: the range test runs in this one "
                          "process and keeps no run to log; drop it")
    path = Path(out) if out is not None else None
    if path is not None and path.suffix.lower() != ".png":
        raise CnnlabError(f"`out` {path}: the plot is a PNG; give a name ending in .png")
    cfg = experiment_config(config, recipe=recipe, overrides=list((overrides or {}).items()), **options)
    found = _lr_find(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps, log=log)
    if path is not None:
        title = f"Learning-rate range test: {found.name}, batch {cfg.train.batch_size}, {cfg.train.optimizer}"
        save_figure(plot_lr_find(found.lrs, found.losses, found.smoothed, found.suggestion, title), path)
    return found, path


def load_run(path: str | Path) -> Run:
    """The run directory at ``path`` (written by ``cnnlab train`` or :func:`train`).

    Raises:
        CnnlabError: not a run directory.
    """
    return Run(path)


def list_models() -> list[str]:
    """Every registered model name (``cnnlab models``)."""

    return model_names()


def create_model(name: str, *, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 **options: Any) -> nn.Module:
    """Builds a registered model (fresh weights).

    Args:
        name: a registered name (:func:`list_models`).
        input_shape: (C, H, W) of one image; default the model's own (its metadata).
        num_classes: outputs; default the model's own (10 for the tutorials, 1000 for ImageNet models).
        **options: builder options (e.g. ``dropout=0.3``).

    Raises:
        CnnlabError: unknown name, impossible input, unknown option.
    """

    meta = model_meta(name)
    return _create(name, num_classes=meta.num_classes if num_classes is None else num_classes,
                   input_shape=tuple(input_shape) if input_shape else meta.input_shape, **options)
