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
from cnnlab.config import Config, config_path, from_dict, read_yaml
from cnnlab.data.datasets import DATASETS
from cnnlab.data.folder import folder_classes
from cnnlab.data.prepare import folder_spec
from cnnlab.errors import CnnlabError, one_of
from cnnlab.models.build import build_model
from cnnlab.models.registry import create_model as _create
from cnnlab.models.registry import model_meta, model_names
from cnnlab.models.summary import summary_text
from cnnlab.runs.experiment import train as _train
from cnnlab.runs.options import experiment_config, resume_config
from cnnlab.training.callbacks import Callback

__all__ = ["Run", "create_model", "list_models", "load_run", "summary", "train"]


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
            ``lr``, ``precision``, ``pretrained``, ``weights``, ``freeze``, ``fine_tune``, ``stop_at``,
            ``nproc`` (data-parallel processes on this machine; ``callbacks`` must then be picklable),
            ``sync_bn``, ``dist_timeout``, ``data_dir``.

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


def summary(model: str | Path | Config | nn.Module, *, input_shape: Sequence[int] | None = None,
            num_classes: int | None = None) -> str:
    """Keras's ``model.summary()`` table of a model, a registered name, a config (name, YAML or object).

    A YAML file may also hold just a list of layers. A config's input comes from its data section
    (registered dataset, or ``data.image_size`` and ``data.grayscale`` for folders).

    Args:
        model: an ``nn.Module``, a registered model name, a packaged config name, a YAML path or a Config.
        input_shape: (C, H, W); needed for an ``nn.Module`` and for configs whose data cannot tell it.
        num_classes: outputs, when the name or config does not fix them.

    Raises:
        CnnlabError: unknown name or file, or an input shape that cannot be worked out.
    """

    if isinstance(model, nn.Module):
        if input_shape is None:
            raise CnnlabError("`input_shape` (C, H, W) is needed to summarise a model object")
        return summary_text(model, tuple(input_shape), title=type(model).__name__)
    built, shape, title = _model_to_summarise(model, input_shape, num_classes)
    return summary_text(built, shape, title=title)


def _model_to_summarise(source: str | Path | Config, input_shape: Sequence[int] | None,
                        num_classes: int | None) -> tuple[nn.Module, tuple[int, int, int], str]:

    if isinstance(source, str) and source in model_names():
        module = create_model(source, input_shape=input_shape, num_classes=num_classes)

        return module, tuple(input_shape) if input_shape else model_meta(source).input_shape, source
    cfg = source if isinstance(source, Config) else _config_or_layers(source)
    shape, classes = _config_input(cfg, input_shape, num_classes)
    title = cfg.name or (Path(source).stem if not isinstance(source, Config) else "model")
    return build_model(cfg.model, input_shape=shape, num_classes=classes), shape, title


def _config_or_layers(source: str | Path) -> Config:
    path = Path(source).expanduser()
    if not path.is_file() and path.suffix not in (".yaml", ".yml"):
        try:
            path = config_path(source)
        except CnnlabError:
            raise one_of("model", source, model_names()) from None
    raw = read_yaml(path, allow_list=True)
    if isinstance(raw, list):  # a bare layer list
        return from_dict(Config, {"model": {"layers": raw}}, "")
    return from_dict(Config, raw, "")


def _config_input(cfg: Config, input_shape: Sequence[int] | None, num_classes: int | None) -> tuple[tuple, int]:
    """(C, H, W) and class count from the config's data section, unless given."""

    ds = cfg.data.dataset
    if ds in DATASETS:
        info = DATASETS.get(ds)
        return tuple(input_shape or info.shape), len(info.classes) if num_classes is None else num_classes
    if ds.startswith("folder:") and (input_shape or cfg.data.image_size):
        shape = tuple(input_shape) if input_shape else (1 if cfg.data.grayscale else 3, cfg.data.image_size,
                                                        cfg.data.image_size)
        return shape, _folder_class_count(cfg) if num_classes is None else num_classes
    if input_shape is None:
        raise CnnlabError(f"cannot infer the input shape of dataset {ds!r}; give `input_shape` (or "
                          "data.image_size for a folder)")
    return tuple(input_shape), 10 if num_classes is None else num_classes


def _folder_class_count(cfg: Config) -> int:
    spec = folder_spec(cfg.data)
    try:
        classes = folder_classes(spec)
    except CnnlabError as exc:
        raise CnnlabError(f"the config's classes come from its image folder, which cannot be read ({exc}); "
                          "give `num_classes`") from None
    if not classes:
        raise CnnlabError(f"the config's image folder {spec.path} has no labelled images to count classes from; "
                          "give `num_classes`")
    return len(classes)

