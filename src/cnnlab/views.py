"""``cnnlab show RUN_DIR WHAT``: every picture of the tutorials for a trained run.

A view takes a :class:`ViewContext` (the run's model, data and evaluation, loaded lazily) and options, and
returns named figures; :func:`show` saves them as PNGs. The computations live in the other ``inspect``
modules (pure functions returning arrays); this module only wires a run to them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from cnnlab.config import Config
from cnnlab.data.augment import Augmenter, preview_grid
from cnnlab.data.prepare import load_test_data, prepare_data, relocate
from cnnlab.data.tensors import ImageData
from cnnlab.errors import CnnlabError, one_of
from cnnlab.inspect import attribution as A
from cnnlab.inspect.activations import channel_maps, feature_map_grid
from cnnlab.inspect.architecture import architecture_diagram
from cnnlab.inspect.maximize import maximize_classes, maximize_layers
from cnnlab.inspect.weights import conv_filters, conv_layers, dense_templates
from cnnlab.plots.attribution import plot_class_maximized, plot_maximized, plot_overlays
from cnnlab.plots.common import image_grid, save_figure
from cnnlab.plots.maps import (
    plot_architecture,
    plot_channel_maps,
    plot_feature_grid,
    plot_filters,
    plot_kernel_demo,
    plot_templates,
)
from cnnlab.plots.results import plot_breakdown, plot_curves, plot_mistakes, plot_predictions
from cnnlab.registry import Registry
from cnnlab.runs.loaded import load_run
from cnnlab.training.engine import Engine
from cnnlab.training.trainer import evaluate


@dataclass(frozen=True)
class ShowOptions:
    """What a view should show.

    Attributes:
        images: test-set indices to use (views that show particular images).
        layers: layer names as ``cnnlab summary`` prints them.
        filter: channel shown by the feature-map grid (the first tutorial's CONVOLUTION_NUMBER).
        n: how many images / filters a view draws.
        seed: seed for random picks.
    """

    images: tuple[int, ...] | None = None
    layers: tuple[str, ...] | None = None
    filter: int = 1
    n: int = 16
    seed: int = 0


class ViewContext:
    """A run's model, test data and evaluation, each computed on first use."""

    def __init__(self, run_dir: str | Path, data_dir: str | None = None) -> None:
        self.loaded = load_run(run_dir)
        self.data_dir = data_dir
        self.model = self.loaded.model.float().eval()
        self.normalizer = self.loaded.normalizer
        self.classes = self.loaded.classes
        self.input_shape = self.loaded.input_shape
        self.notes: list[str] = []  # what the views adapted, for the caller to show

    @cached_property
    def test(self):
        cfg = relocate(self.loaded.cfg.data, self.data_dir)
        data = load_test_data(cfg)
        return ImageData(data.images, data.labels, data.classes, data.name)  # positions 0..N-1: --images indices

    @cached_property
    def data_problem(self) -> str | None:
        """Why the run's test images cannot be loaded (moved, deleted), or None when they can."""
        try:
            _ = self.test
        except CnnlabError as exc:
            return str(exc)
        return None

    @cached_property
    def evaluation(self):
        """fp32 evaluation of the whole test set, keeping probabilities."""

        # channels-last: fp32 convolutions run 8-10x faster that way on CPU than in NCHW
        return evaluate(self.model, self.test, normalizer=self.normalizer,
                        engine=Engine(torch.device("cpu"), None, True), batch_size=500, keep_probs=True)

    @cached_property
    def history(self) -> list[dict]:
        return self.loaded.run.read_history()

    def default_images(self, wanted: tuple[int, ...]) -> list[int]:
        """The default test images that exist (a small test set has no image 26), with a note when some do not."""
        n = len(self.test)
        kept = [i for i in wanted if i < n] or [0]
        if len(kept) < len(wanted):
            self.notes.append(f"the test set has {n} images, so the default images {list(wanted)} became {kept}")
        return kept

    def images(self, idx) -> torch.Tensor:
        """uint8 (N, C, H, W) test images at ``idx``, with a clear error for out-of-range indices."""
        idx = list(idx)
        bad = [i for i in idx if not 0 <= i < len(self.test)]
        if bad:
            raise CnnlabError(f"`images` {bad[0]} is out of range; the test set has {len(self.test):,} images (0..{len(self.test) - 1})")
        return self.test.images[idx]

    def x(self, idx) -> torch.Tensor:
        return self.normalizer(self.images(idx))


ViewFn = Callable[[ViewContext, ShowOptions], dict[str, Figure]]
VIEWS: Registry[ViewFn] = Registry("view")


def _np_images(t: torch.Tensor) -> np.ndarray:
    return t.cpu().numpy()


# ------------------------------------------------------------------------------------------- results


def random_predictions(probs: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` random test indices (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(probs), generator=g)[: min(n, len(probs))]


def top_mistakes(probs: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of wrong predictions, most confident (highest loss) first — fastai's plot_top_losses."""
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != labels).flatten()
    order = conf[wrong].argsort(descending=True)
    return wrong[order][:n]


def cell_images(probs: torch.Tensor, labels: torch.Tensor, true: int, pred: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images of one confusion-matrix cell (true class ``true``, predicted ``pred``), highest loss
    first: in a mistake cell the most confident mistakes lead (fastai's top losses, one cell at a time).

    Args:
        probs: (N, classes) softmax probabilities.
        labels: (N,) true classes.
        true, pred: the cell's row and column.

    Returns:
        (indices, losses): int64 (M,) test indices and float (M,) cross-entropy ``-log p[true]``.

    Raises:
        CnnlabError: a class out of range.
    """
    k = probs.shape[1]
    if not (0 <= true < k and 0 <= pred < k):
        raise CnnlabError(f"confusion cell ({true}, {pred}) does not exist; classes are 0..{k - 1}")
    idx = torch.nonzero((labels == true) & (probs.argmax(1) == pred)).flatten()
    losses = -torch.log(probs[idx, true].double().clamp_min(1e-300))
    order = losses.argsort(descending=True, stable=True)
    return idx[order], losses[order]


@VIEWS.register("curves")
def _curves(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    if not ctx.history:
        raise CnnlabError(f"{ctx.loaded.run.path} has no metrics.jsonl entries yet; train at least one epoch")
    return {"curves": plot_curves(ctx.history, title=f"Learning curves: {ctx.loaded.run.path.name}")}


@VIEWS.register("predictions")
def _predictions(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    probs = ctx.evaluation.probs
    idx = torch.tensor(opts.images) if opts.images else random_predictions(probs, opts.n, opts.seed)
    conf, pred = probs[idx].max(1)
    return {"predictions": plot_predictions(_np_images(ctx.images(idx.tolist())), ctx.test.labels[idx].tolist(),
                                            pred.tolist(), conf.tolist(), ctx.classes)}


@VIEWS.register("mistakes")
def _mistakes(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    ev = ctx.evaluation
    labels = ctx.test.labels
    idx = top_mistakes(ev.probs, labels, opts.n)
    figs = {}
    if len(idx):
        conf, pred = ev.probs[idx].max(1)
        total_wrong = int((ev.probs.argmax(1) != labels).sum())
        figs["mistakes"] = plot_mistakes(_np_images(ctx.images(idx.tolist())), labels[idx].tolist(), pred.tolist(),
                                         conf.tolist(), ctx.classes, total_wrong, len(labels))
    figs["mistakes-breakdown"] = plot_breakdown(ev.confusion.numpy(), ctx.classes, ev.most_confused(10))
    return figs


# ------------------------------------------------------------------------------------ inside the model


@VIEWS.register("feature-maps")
def _feature_maps(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    idx = list(opts.images or ctx.default_images((0, 7, 26)))  # the first tutorial's three test images
    images = ctx.images(idx)
    maps, names = feature_map_grid(ctx.model, images, ctx.normalizer, layers=list(opts.layers) if opts.layers else None,
                                   filter_index=opts.filter)
    labels = [f"#{i} {ctx.classes[int(ctx.test.labels[i])]}" for i in idx]
    figs = {"feature-maps": plot_feature_grid(maps, names, row_labels=labels, filter_index=opts.filter)}
    channel_layers = list(opts.layers) if opts.layers else names[:1]  # the grid's first column
    for layer in channel_layers:
        figs[f"feature-maps-{layer}"] = plot_channel_maps(channel_maps(ctx.model, images[0], ctx.normalizer, layer),
                                                          layer=f"{layer}, test image #{idx[0]}")
    return figs


@VIEWS.register("filters")
def _filters(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    layers = list(opts.layers) if opts.layers else conv_layers(ctx.model)[:1]
    if not layers:
        raise CnnlabError("this model has no convolution layers, so no filters to show; try `templates`")
    return {("filters" if i == 0 and not opts.layers else f"filters-{layer}"): plot_filters(conv_filters(ctx.model, layer), layer=layer)
            for i, layer in enumerate(layers)}


@VIEWS.register("templates")
def _templates(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    return {"templates": plot_templates(dense_templates(ctx.model, ctx.input_shape), ctx.classes)}


@VIEWS.register("kernels")
def _kernels(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    i = (opts.images or ctx.default_images((0,)))[0]
    image = ctx.images([i])[0].float().mean(0).numpy()  # the tutorial's demo works on one grey channel
    return {"kernels": plot_kernel_demo(image)}


@VIEWS.register("architecture")
def _architecture(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    diagram = architecture_diagram(ctx.model, ctx.input_shape)
    mcfg = ctx.loaded.cfg.model
    title = mcfg.name if not mcfg.layers else (ctx.loaded.cfg.name or "layers from config")
    return {"architecture": plot_architecture(diagram, title=title or "model")}


# ------------------------------------------------------------------------------------ attribution


def correct_indices(ctx: ViewContext, n: int, seed: int = 0) -> list[int]:
    """Up to ``n`` random correctly classified test images (ascending), picked like
    ``attribution.select_correct`` but from the cached test evaluation, so the heat-map views don't each
    re-run the whole test set."""
    ev = ctx.evaluation
    correct = torch.nonzero(ev.probs.argmax(1) == ctx.test.labels).flatten()
    pick = torch.randperm(correct.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return correct[pick].sort().values.tolist()


def _correct(ctx: ViewContext, opts: ShowOptions, default: int = 8) -> list[int]:
    return list(opts.images) if opts.images else correct_indices(ctx, min(opts.n, default), seed=opts.seed)


def _overlay_titles(ctx: ViewContext, idx: list[int]) -> list[str]:
    probs = ctx.evaluation.probs[idx]
    return [f"#{i} {ctx.classes[int(ctx.test.labels[i])]} ({float(p.max()):.2f})" for i, p in zip(idx, probs, strict=True)]


def _attribution_view(method: str) -> ViewFn:
    def view(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
        idx = _correct(ctx, opts)
        x = ctx.x(idx)
        targets = ctx.test.labels[idx]
        if method == "occlusion":
            heats = {"occlusion": A.occlusion(ctx.model, x, targets)}
        elif method == "gradcam":
            layer = opts.layers[0] if opts.layers else None
            heats = {"Grad-CAM" + (f" ({layer})" if layer else ""): A.gradcam(ctx.model, x, targets, layer=layer)}
        else:
            heats = {"saliency": A.saliency(ctx.model, x, targets),
                     "integrated gradients": A.integrated_gradients(ctx.model, x, targets)}
        heats = {k: v.numpy() for k, v in heats.items()}
        return {method: plot_overlays(_np_images(ctx.images(idx)), heats, _overlay_titles(ctx, idx),
                                      suptitle=f"Which pixels matter for the true class ({', '.join(heats)})")}

    view.__name__ = method
    return view


for _m in ("occlusion", "gradcam", "saliency"):
    VIEWS.add(_m, _attribution_view(_m))


@VIEWS.register("maximize")
def _maximize(ctx: ViewContext, opts: ShowOptions) -> dict[str, Figure]:
    figs = {}
    layers = list(opts.layers) if opts.layers else None
    per_layer = maximize_layers(ctx.model, layers, filters=min(opts.n, 8), input_shape=ctx.input_shape,
                                normalizer=ctx.normalizer, seed=opts.seed)
    if per_layer:
        figs["maximize-filters"] = plot_maximized(per_layer)
    classes = maximize_classes(ctx.model, list(range(len(ctx.classes))), input_shape=ctx.input_shape,
                               normalizer=ctx.normalizer, seed=opts.seed)
    figs["maximize-classes"] = plot_class_maximized(classes.images, list(ctx.classes))
    return figs


# ------------------------------------------------------------------------------------------- show


def applicable(ctx: ViewContext) -> list[str]:
    """The views that make sense for this run (no filters without convolutions, templates only for FC nets, no
    curves without epochs)."""

    has_conv = bool(conv_layers(ctx.model))
    skip = {"templates"} if has_conv else {"feature-maps", "filters", "occlusion", "gradcam", "maximize"}
    if not ctx.history:  # a run imported from Keras has no training record to draw
        skip.add("curves")
    return [v for v in VIEWS.names() if v not in skip]


def render(ctx: ViewContext, what: str, options: ShowOptions = ShowOptions()) -> dict[str, Figure]:
    """The figures of view ``what`` (or ``all`` the views that apply), by the file stem ``show`` saves them as.

    Raises:
        CnnlabError: unknown view, options that do not fit the run (layers, image indices), missing data.
    """
    if what != "all" and what not in VIEWS:
        raise one_of("view", what, [*VIEWS.names(), "all"])
    if options.n < 1:
        raise CnnlabError(f"`n` is {options.n}; views draw at least 1 image or filter")
    if what != "all":
        return VIEWS.get(what)(ctx, options)
    figs: dict[str, Figure] = {}
    for name in applicable(ctx):  # all: every view that can be drawn; the others are listed in ctx.notes
        try:
            figs.update(VIEWS.get(name)(ctx, options))
        except CnnlabError as exc:
            ctx.notes.append(f"{name} not drawn: {exc}")
    if not figs:
        raise CnnlabError("no view could be drawn: " + "; ".join(ctx.notes))
    return figs


def show(run_dir: str | Path, what: str, options: ShowOptions = ShowOptions(), *, out: str | Path | None = None,
         data_dir: str | None = None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Path]:
    """Renders view ``what`` (or ``all``) of a run into PNG files (``RUN_DIR/figures`` or ``out``); returns their paths.

    ``log`` receives a ``note: ...`` line for each adaptation (defaults clamped to a small test set) and, with
    ``all``, for each view that could not be drawn and why.
    """
    if what != "all" and what not in VIEWS:
        raise one_of("view", what, [*VIEWS.names(), "all"])
    ctx = ViewContext(run_dir, data_dir)
    folder = Path(out).expanduser() if out else ctx.loaded.run.figures
    paths = [save_figure(fig, folder / f"{stem}.png") for stem, fig in render(ctx, what, options).items()]
    for note in ctx.notes:
        log(f"note: {note}")
    return paths


def augment_preview(cfg: Config, out: str | Path, *, n: int = 8, copies: int = 8, seed: int = 0) -> Path:
    """Writes a PNG grid: each row a training image, then ``copies`` augmented versions of it."""

    aug = Augmenter(cfg.data.augment)
    if not aug.enabled:
        raise CnnlabError("the config enables no augmentation; set data.augment keys (e.g. data.augment.hflip=true)")
    if n < 1 or copies < 1:
        raise CnnlabError(f"augment preview: n={n} and copies={copies} must both be ≥ 1")
    data = prepare_data(cfg.data, log=lambda s: None)
    aug.check(data.train.shape)
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    sheet = preview_grid(data.train.images[pick], aug, n=n, copies=copies, seed=seed)
    c = data.train.shape[0]
    h, w = data.train.shape[1:]
    tiles = [sheet[r * h:(r + 1) * h, k * w:(k + 1) * w].transpose(2, 0, 1) for r in range(len(pick)) for k in range(copies + 1)]
    titles = ["original" if k == 0 else f"aug {k}" for _ in range(len(pick)) for k in range(copies + 1)]
    fig = image_grid(tiles, titles, cols=copies + 1, panel=1.2, suptitle=f"Augmentation preview: {cfg.name or 'config'}",
                     cmap="gray" if c == 1 else None)
    return save_figure(fig, out)
