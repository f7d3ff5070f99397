"""A run as a notebook sees it: facts, curves and results at a glance, and every command as a method."""

from __future__ import annotations

import dataclasses
import html
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnlab.app.report import build_report
from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.plots.common import figure_data_uri
from cnnlab.plots.results import plot_curves
from cnnlab.runs.history import run_best_epoch
from cnnlab.runs.loaded import evaluate_run
from cnnlab.runs.run_dir import RESULTS, RunDir
from cnnlab.serve.onnx import export_onnx
from cnnlab.serve.predict import Predictor, predict_files
from cnnlab.training.metrics import Evaluation
from cnnlab.views import ShowOptions, ViewContext, render


class Run:
    """A run directory written by ``cnnlab train`` (or :func:`cnnlab.train`).

    In Jupyter it shows itself as a small table (status, data, model, best epoch, test accuracy) with its
    learning curves. The model and the test data are loaded on first use and kept.

    Attributes:
        path: the run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self._dir = RunDir.open(path)
        self.path = self._dir.path

    # ------------------------------------------------------------------------------------------ facts

    @property
    def config(self) -> Config:
        """The fully resolved config the run was trained with."""
        return self._dir.read_config()

    @property
    def meta(self) -> dict[str, Any]:
        """run.json: status, data shape, classes, normalisation, engine, timing."""
        return self._dir.meta

    @property
    def status(self) -> str:
        """``running``, ``done``, ``failed`` or ``interrupted``."""
        return self.meta.get("status", "unknown")

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (metrics.jsonl)."""
        return self._dir.read_history()

    @property
    def results(self) -> dict[str, Any] | None:
        """results.json (test loss, accuracy, per class, confusion), or None before the run finished."""
        return self._dir.read_json(RESULTS) if self._dir.file(RESULTS).is_file() else None

    @property
    def best_epoch(self) -> dict[str, Any] | None:
        """The metrics of the epoch ``checkpoints/best`` holds (by the run's monitor and mode)."""
        return run_best_epoch(self.meta, self.history)

    # -------------------------------------------------------------------------------------- commands

    @cached_property
    def _views(self):
        return ViewContext(self.path)

    def evaluate(self, *, data_dir: str | Path | None = None) -> Evaluation:
        """The final model on the test set (``cnnlab evaluate``): loss, accuracy, per class, confusion."""

        return evaluate_run(self.path, data_dir=str(data_dir) if data_dir else None)[1]

    def predict(self, inputs: str | Path | Sequence[str | Path] | np.ndarray, *, top_k: int = 1,
                engine: str = "torch") -> list | np.ndarray:
        """Classifies image files or folders (top-k labels per file), or uint8 pixel arrays (probabilities).

        Args:
            inputs: a file or folder, a list of them, or uint8 images (N, C, H, W) / (C, H, W) at the run's
                input size.
            top_k: labels per file.
            engine: ``torch``, ``onnx`` or ``auto``.

        Returns:
            For files: a list of :class:`~cnnlab.serve.predict.Prediction` (``path``, ``top``, ``error``).
            For arrays: softmax probabilities (N, classes).
        """

        predictor = self._predictor(engine)
        if isinstance(inputs, np.ndarray):
            return predictor.predict(inputs)
        files = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        return predict_files(self.path, files, top_k=top_k, predictor=predictor)

    def _predictor(self, engine: str):
        cache = self.__dict__.setdefault("_predictors", {})
        if engine not in cache:
            cache[engine] = Predictor.from_run(self.path, engine)
        return cache[engine]

    def figures(self, what: str, **options: Any) -> dict[str, Figure]:
        """Every figure of view ``what`` (``cnnlab show``), by name.

        Options: ``images`` (test indices: a list, or text like ``"0,7,26"``), ``layers`` (a name or a list),
        ``filter``, ``n``, ``seed``.

        Raises:
            CnnlabError: an unknown view or option, or options that do not fit the run.
        """
        return render(self._views, what, _show_options(options))

    def show(self, what: str, **options: Any) -> Figure:
        """The main figure of view ``what`` (drawn inline in Jupyter), e.g. ``run.show("feature-maps", images=[0, 7])``.

        Views: curves, predictions, mistakes, feature-maps, filters, templates, occlusion, gradcam,
        saliency, maximize, kernels, architecture. Options: ``images``, ``layers``, ``filter``, ``n``, ``seed``.
        """
        figs = self.figures(what, **options)
        _inline_figures()
        return figs.get(what) or next(iter(figs.values()))

    def report(self, out: str | Path | None = None, *, maximize: bool = False) -> Path:
        """Writes the self-contained HTML report (``cnnlab report``); returns its path."""

        return build_report(self.path, out=out, maximize=maximize, log=lambda s: None)

    def export(self, out: str | Path | None = None, **kwargs: Any) -> Path:
        """Exports the model to ONNX with the parity check (``cnnlab export``); returns the file's path."""

        return export_onnx(self.path, out=out, log=lambda s: None, **kwargs).path

    # ----------------------------------------------------------------------------------------- display

    def _facts(self) -> list[tuple[str, str]]:
        meta, cfg = self.meta, self.config
        shape = meta.get("input_shape")
        best = self.best_epoch
        results = self.results
        status = self.status + (f" ({meta['failure']})" if self.status == "failed" and meta.get("failure") else "")
        rows = [("status", status), ("data", f"{meta.get('dataset', cfg.data.dataset)}"
                                                  + (f" {shape[1]}x{shape[2]}x{shape[0]}" if shape else "")),
                ("model", (cfg.model.name if not cfg.model.layers else "layers from config")
                          + (f", {meta['params']:,} params" if "params" in meta else "")),
                ("epochs", f"{len(self.history)} of {meta.get('epochs_planned', cfg.train.epochs)}")]
        if best is not None:
            monitor = meta.get("monitor", "val_loss")
            rows.append(("best epoch", f"{best['epoch']} ({monitor} {best.get(monitor, float('nan')):.4f})"))
        if results is not None:
            rows.append(("test accuracy", f"{results['test_acc']:.4f}"))
        return rows

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: " + ", ".join(f"{k} {v}" for k, v in self._facts()) + ")"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in self._facts())
        curves = ""
        if self.history:

            uri = figure_data_uri(plot_curves(self.history, title=None), dpi=70)
            curves = f"<img src='{uri}' alt='learning curves' style='max-width:560px'>"
        return (f"<div><b>cnnlab run</b> <code>{html.escape(str(self.path))}</code><table>{rows}</table>"
                f"{curves}</div>")


def _show_options(options: dict[str, Any]) -> ShowOptions:
    """:class:`ShowOptions` from keyword arguments, with one-line errors for unknown names and bad values."""
    valid = [f.name for f in dataclasses.fields(ShowOptions)]
    if unknown := [k for k in options if k not in valid]:
        raise CnnlabError(f"unknown option `{unknown[0]}` of show; valid: {', '.join(valid)}")
    opts = dict(options)
    if isinstance(opts.get("images"), str):
        opts["images"] = opts["images"].split(",")
    if opts.get("images") is not None:
        try:
            opts["images"] = tuple(int(i) for i in opts["images"])
        except (TypeError, ValueError):
            raise CnnlabError(f"`images` {options['images']!r}: expected test-set indices like [0, 7, 26]") from None
    if isinstance(opts.get("layers"), str):
        opts["layers"] = (opts["layers"],)
    elif opts.get("layers") is not None:
        opts["layers"] = tuple(opts["layers"])
    for key in ("filter", "n", "seed"):
        if key in opts and (not isinstance(opts[key], int) or isinstance(opts[key], bool)):
            raise CnnlabError(f"`{key}` expects a whole number, got {opts[key]!r}")
    return ShowOptions(**opts)


def _inline_figures() -> None:
    """In Jupyter/IPython, show returned Figures as PNG, as ``%matplotlib inline`` would.

    cnnlab draws without pyplot (no global state, no display needed), so IPython has no formatter for its
    Figures until one is registered; this does it once per shell.
    """
    shell_module = sys.modules.get("IPython")
    shell = shell_module.get_ipython() if shell_module is not None else None
    if shell is None or id(shell) in _INLINE_SHELLS:
        return
    from IPython.core.pylabtools import select_figure_formats  # only inside a running IPython

    select_figure_formats(shell, {"png"}, bbox_inches="tight")
    _INLINE_SHELLS.add(id(shell))


_INLINE_SHELLS: set[int] = set()
