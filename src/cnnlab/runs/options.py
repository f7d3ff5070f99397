"""The training options, defined once: the CLI's training flags and the Python API's keyword arguments.

Each :class:`Option` says which config keys it sets and with what typed value, so ``cnnlab train
--batch-size 64`` and ``cnnlab.train(..., batch_size=64)`` reach the config as the same integer (never as
text re-parsed as YAML). :func:`experiment_config` builds the :class:`~cnnlab.config.Config` of an
experiment from a config file or name, a recipe, typed overrides and these options.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import Config, Override, config_path, load_config, recipe_path, to_dict
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Option:
    """One training option.

    Attributes:
        name: the Python keyword (``batch_size``); the CLI flag is ``--batch-size``.
        kind: ``int``, ``float``, ``str``, ``flag`` (on when given) or ``list`` (repeatable).
        help: one line for ``--help`` and docstrings.
        set: turns the user's value into typed ``(config key, value)`` overrides.
        choices: the values allowed, when there is a fixed set.
        metavar: how ``--help`` names the value.
        cli: the CLI flag when it is not ``--`` + the name (``loggers`` is ``--log``).
    """

    name: str
    kind: str
    help: str
    set: Callable[[Any], list[Override]]
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    cli: str | None = None

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def keys(self) -> tuple[str, ...]:
        """The config keys this option sets (for translating library errors back into flags)."""
        sample = {"int": 1, "float": 1.0, "str": "x", "flag": True, "list": list(self.choices or ["x=1"])}[self.kind]
        return tuple(k for k, _ in self.set(sample))


def _to(key: str) -> Callable[[Any], list[Override]]:
    return lambda value: [(key, value)]


LOGGERS = ("tensorboard", "mlflow")


def _loggers(names: list[str]) -> list[Override]:
    """``tensorboard`` → ``callbacks.tensorboard: true``; ``mlflow`` → ``callbacks.mlflow``: the store of
    ``$MLFLOW_TRACKING_URI`` as MLflow itself would use it, else ``mlflow.db`` here (MLflow's own default)."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise CnnlabError(f"`loggers`: unknown logger {unknown[0]!r}; valid: {', '.join(LOGGERS)}")
    out: list[Override] = [("callbacks.tensorboard", True)] if "tensorboard" in names else []
    if "mlflow" in names:
        out.append(("callbacks.mlflow", os.environ.get("MLFLOW_TRACKING_URI") or "mlflow.db"))
    return out


OPTIONS: tuple[Option, ...] = (
    Option("model", "str", "registered model name (cnnlab models); replaces the config's model",
           lambda v: [("model.name", v), ("model.layers", None)]),
    Option("dataset", "str", "registered dataset (cnnlab datasets list) or folder:PATH", _to("data.dataset")),
    Option("epochs", "int", "passes over the training set", _to("train.epochs")),
    Option("batch_size", "int", "images per training step", _to("train.batch_size")),
    Option("lr", "float", "peak learning rate (default: the model's own for Adam, e.g. 1e-4 for VGG, else 0.001)",
           _to("train.lr")),
    Option("precision", "str", "bf16 autocast (auto where native) or fp32", _to("train.precision"),
           choices=("auto", "bf16", "fp32")),
    Option("pretrained", "flag", "start from the official ImageNet weights of --model", _to("model.pretrained")),
    Option("weights", "str", "start from a local weight file (.pth/.safetensors)", _to("model.weights"),
           metavar="FILE"),
    Option("freeze", "str", "train only the classifier head (transfer learning)", _to("model.freeze"),
           choices=("backbone",)),
    Option("fine_tune", "flag", "fastai-style: 1 epoch with the backbone frozen, then all layers, backbone at "
           "lr x 0.1", lambda v: [("model.freeze", "backbone"), ("model.freeze_epochs", 1),
                                  ("model.backbone_lr", 0.1)] if v else []),
    Option("cache_features", "str", "with --freeze backbone and no augmentation, compute the backbone's features "
           "once and train the head on them every epoch (auto: where it applies; off: recompute every epoch)",
           _to("train.cache_features"), choices=("auto", "on", "off")),
    Option("stop_at", "list", "stop once e.g. val_acc=0.91 or loss=0.3 is reached (repeatable)",
           lambda v: [("callbacks.stop_at", list(v))], metavar="METRIC=VALUE"),
    Option("loggers", "list", "also log to TensorBoard (RUN_DIR/tensorboard) or MLflow ($MLFLOW_TRACKING_URI, else "
           "./mlflow.db) (repeatable)", _loggers, choices=LOGGERS, metavar="tensorboard|mlflow", cli="--log"),
    Option("nproc", "int", "processes on this machine (data-parallel DDP; --batch-size is the global batch, split "
           "among them)", _to("train.nproc"), metavar="N"),
    Option("sync_bn", "flag", "BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)",
           _to("train.sync_bn")),
    Option("dist_timeout", "float", "seconds a distributed process waits for the others before the job fails",
           _to("train.dist_timeout"), metavar="SECONDS"),
    Option("data_dir", "str", "folder holding <dataset>/<official files> (with --resume of a folder dataset: "
           "the images' new folder)", _to("data.data_dir"), metavar="DIR"),
)
BY_NAME = {o.name: o for o in OPTIONS}


def option_overrides(options: Mapping[str, Any]) -> list[Override]:
    """Typed overrides for the options given; None means "not given" (0 and False are values).

    Raises:
        CnnlabError: an unknown option name.
    """
    out: list[Override] = []
    for name, value in options.items():
        if name not in BY_NAME:
            raise CnnlabError(f"unknown training option {name!r}; valid: {', '.join(BY_NAME)}")
        if value is None:
            continue
        if BY_NAME[name].kind == "list" and isinstance(value, str):
            value = [value]
        out += BY_NAME[name].set(value)
    return out


def layer_lists(name: str) -> list[dict]:
    """A tutorial model's layer list, so ``model.layers.0.filters`` can edit a model given by name."""
    from cnnlab.models.seeds import SEED_SPECS, seed_layers  # only overrides into model.layers need it

    if name not in SEED_SPECS:
        raise CnnlabError(f"model.layers...: model {name!r} is not defined by a layer list; "
                          f"use one of {', '.join(sorted(SEED_SPECS))} or give model.layers in the YAML")
    return seed_layers(name)


def experiment_config(config: str | Path | Config | None = None, *, recipe: str | None = None,
                      overrides: Iterable[Override] = (), **options: Any) -> Config:
    """The config of an experiment: a YAML file / packaged name / Config, or a recipe, then options, then overrides.

    Args:
        config: a YAML path, a packaged config name (``fashion_mnist_cnn``), a :class:`Config`, or None
            for the defaults.
        recipe: a packaged recipe for ``options["dataset"]`` (``fast`` → ``configs/fast/DATASET.yaml``), or the
            one of that recipe written for ``options["model"]`` when there is one (``--model cnn_64x2``).
        overrides: typed ``(key.path, value)`` pairs applied last.
        **options: the training options of :data:`OPTIONS` (``epochs=3``, ``batch_size=64``, ...).

    Raises:
        CnnlabError: both a config and a recipe, an unknown file, option or key, or a bad value.
    """
    given = [*option_overrides(options), *overrides]
    if recipe is not None:
        if config is not None:
            raise CnnlabError("a recipe picks the config itself (configs/RECIPE/DATASET.yaml); give a recipe or a "
                              "config, not both")
        path = recipe_path(recipe, options.get("dataset") or "fashion-mnist", options.get("model"))
        return load_config(path, given, layer_lists=layer_lists)
    if isinstance(config, Config):
        return load_config(None, given, base=to_dict(config), layer_lists=layer_lists)
    path = config_path(config) if config is not None else None
    return load_config(path, given, layer_lists=layer_lists)


# What a resumed run can change: how long and how it trains, and where its data is now. The others would make
# another experiment (another model, data or starting weights) than the checkpoint holds.
RESUME_OPTIONS = ("epochs", "batch_size", "lr", "precision", "stop_at", "data_dir", "nproc", "dist_timeout",
                  "cache_features")


def resume_config(run_dir: str | Path, *, overrides: Iterable[Override] = (), refused: Iterable[str] = (),
                  **options: Any) -> Config:
    """The config to resume ``run_dir`` with: its own, changed by the options a resume can apply.

    Args:
        run_dir: the run directory.
        overrides: typed ``(key, value)`` pairs, applied last (any config key: the run records the change).
        refused: names of other arguments the caller was given that a resume cannot honour (``config``,
            ``recipe``, ``out``, ``overwrite``).
        **options: training options; only :data:`RESUME_OPTIONS` apply.

    Raises:
        CnnlabError: an option or argument a resume cannot apply, naming each.
    """
    given = [n for n, v in options.items() if n not in RESUME_OPTIONS and v is not None]
    bad = [*given, *refused]
    if bad:
        names = ", ".join(f"`{n}`" for n in bad)
        raise CnnlabError(f"`resume` continues a run with its own model, data and starting weights, so {names} "
                          f"cannot apply; drop {'it' if len(bad) == 1 else 'them'} (`epochs` extends the run; "
                          f"{', '.join(f'`{n}`' for n in RESUME_OPTIONS[1:])} change how it goes on)")
    old = experiment_config(Path(run_dir) / "config.yaml")
    cfg = experiment_config(Path(run_dir) / "config.yaml", overrides=overrides, **options)
    moved = [k for k in ("monitor", "mode", "min_delta") if getattr(old.callbacks, k) != getattr(cfg.callbacks, k)]
    if moved:  # checkpoints/best and the run's best epoch were chosen by these: they cannot change mid-run
        raise CnnlabError(f"`callbacks.{moved[0]}` cannot change on a resume: checkpoints/best was chosen by "
                          f"{old.callbacks.monitor} ({old.callbacks.mode}, min_delta {old.callbacks.min_delta}); "
                          "train a new run to use another")
    return cfg
