"""``cnnlab import-keras``: a trained Keras model (``.h5`` / ``.keras``) as a normal cnnlab run directory.

The model is converted by :mod:`cnnlab.models.keras` (no TensorFlow). The run directory it gets is the one
``cnnlab train`` writes, minus the training record: ``config.yaml`` with the imported layer list,
``model.safetensors``, ``run.json`` (``"source": "imported from Keras"``, the file, its SHA-256 and Keras
version, the input shape, classes and normalisation), ``summary.txt``, an empty ``metrics.jsonl`` and, when
a dataset is given, ``results.json`` from an fp32 evaluation on its test set. ``evaluate``, ``predict``,
``show``, ``report`` and ``export`` then work on it as on any run.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab._version import __version__
from cnnlab.config import Config, DataConfig, ModelConfig, TrainConfig
from cnnlab.data.prepare import load_test_data
from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.io import file_digest, replace_folder, temp_folder_beside, write_atomic
from cnnlab.models.keras import KerasModel, build_keras, read_keras
from cnnlab.models.summary import param_counts, summary_text
from cnnlab.runs.experiment import save_weights
from cnnlab.runs.run_dir import META, RESULTS, SUMMARY, WEIGHTS, RunDir, check_folder, numbered, safe_name
from cnnlab.training.engine import Engine
from cnnlab.training.metrics import Evaluation
from cnnlab.training.trainer import evaluate

SOURCE = "imported from Keras"
Log = Callable[[str], None]


@dataclass
class ImportResult:
    """What an import left.

    Attributes:
        run: the new run directory.
        keras: the converted model (layers, weights, Keras's parameter counts).
        test: the evaluation on the dataset's test set, or None without a dataset.
    """

    run: RunDir
    keras: KerasModel
    test: Evaluation | None


def import_keras(model_file: str | Path, *, out: str | Path | None = None, dataset: str | None = None,
                 data_dir: str | None = None, classes: Sequence[str] | None = None, overwrite: bool = False,
                 log: Log = print) -> ImportResult:
    """Converts a Keras model file into a run directory and, with ``dataset``, evaluates it on its test set.

    Args:
        model_file: a ``.h5`` or ``.keras`` file written by Keras's ``model.save``.
        out: the run directory (default ``runs/<file stem>``, numbered when taken).
        dataset: a registered dataset or ``folder:PATH`` the model was trained on; its test set is evaluated
            and later commands (evaluate, show, report) use it.
        data_dir: where the dataset's files are.
        classes: class names in output order, when no dataset gives them (default ``class_0``, ...).
        overwrite: replace an existing run directory at ``out``.
        log: receives one line per step.

    Raises:
        CnnlabError: an unreadable file or unmappable layer (see :func:`~cnnlab.models.keras.read_keras`), a
            dataset whose images or classes do not fit the model, ``classes`` of the wrong length, or a taken
            ``out``; nothing is written then.
    """
    path = Path(model_file).expanduser()
    target = Path(out) if out else numbered(Path("runs") / safe_name(path.stem))
    check_folder(target, overwrite=overwrite, marker=META, what="run directory")  # refused before any work
    km = read_keras(path)
    model = build_keras(km)
    dropped = f" (left out: {', '.join(km.dropped)})" if km.dropped else ""
    log(f"Keras {km.keras_version} model {km.name!r}: {len(km.layers)} layers, {km.params[0]:,} params{dropped}")
    cfg = _config(path, km, dataset, data_dir)
    test = _test_data(cfg.data, km) if dataset else None
    names = _classes(km, test, classes)
    norm = Normalizer(km.mean, km.std)
    ev = None
    if test is not None:
        ev = evaluate(model, test, normalizer=norm, engine=Engine(torch.device("cpu"), None, True),
                      batch_size=cfg.train.eval_batch_size)
        log(f"Test accuracy on {dataset}: {ev.acc:.4f} (loss {ev.loss:.4f}, {len(test):,} images)")
    tmp = temp_folder_beside(target)
    try:
        run = RunDir(tmp)
        run.write_config(cfg)
        run.update_meta(**_meta(path, km, cfg, names, norm, ev))
        run.write_history([])
        save_weights(model, run.file(WEIGHTS))
        if ev is not None:
            run.write_json(RESULTS, ev.to_dict())
        write_atomic(run.file(SUMMARY), _summary(path, km, model, ev))
        replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImportResult(RunDir(target), km, ev)


def _config(path: Path, km: KerasModel, dataset: str | None, data_dir: str | None) -> Config:
    c, h, w = km.input_shape
    folder = bool(dataset and dataset.startswith("folder:"))
    if folder and h != w:
        raise CnnlabError(f"the Keras model takes {h}x{w} images; folder datasets are resized to squares, so "
                          "import it with a registered `dataset` or none")
    data = DataConfig(dataset=dataset or "", data_dir=data_dir, normalize="unit",
                      image_size=h if folder else None, grayscale=folder and c == 1)
    return Config(name=safe_name(path.stem), description=f"{SOURCE}: {path.name} (Keras {km.keras_version})",
                  data=data, model=ModelConfig(name=None, layers=tuple(km.layers)),
                  train=TrainConfig(precision="fp32"))  # evaluate as Keras computed: fp32


def _test_data(cfg: DataConfig, km: KerasModel) -> ImageData:
    test = load_test_data(cfg)
    if tuple(test.shape) != km.input_shape:
        c, h, w = km.input_shape
        tc, th, tw = test.shape
        raise CnnlabError(f"the Keras model takes {h}x{w}x{c} images but `dataset` {cfg.dataset} has {th}x{tw}x{tc}; "
                          "give the dataset the model was trained on")
    if test.num_classes != km.num_classes:
        raise CnnlabError(f"the Keras model has {km.num_classes} outputs but `dataset` {cfg.dataset} has "
                          f"{test.num_classes} classes; give the dataset the model was trained on")
    return test


def _classes(km: KerasModel, test: ImageData | None, classes: Sequence[str] | None) -> list[str]:
    if classes:
        if len(classes) != km.num_classes:
            raise CnnlabError(f"`classes` names {len(classes)} classes but the model has {km.num_classes} outputs")
        if not all(c.strip() for c in classes):  # "a,,b": an output with no name in every table and file
            raise CnnlabError(f"`classes` has an empty name at position {[c.strip() for c in classes].index('')}; "
                              "give every output a name")
        if len(set(classes)) != len(classes):  # two outputs of one name: predictions could not tell them apart
            twice = next(c for c in classes if classes.count(c) > 1)
            raise CnnlabError(f"`classes` names {twice!r} twice; give every output its own name")
        return list(classes)
    if test is not None:
        return list(test.classes)
    return [f"class_{i}" for i in range(km.num_classes)]


def _meta(path: Path, km: KerasModel, cfg: Config, classes: list[str], norm: Normalizer,
          ev: Evaluation | None) -> dict:
    fmt = "keras" if path.suffix.lower() == ".keras" else "h5"
    meta = {
        "cnnlab": __version__, "torch": torch.__version__, "status": "done", "source": SOURCE,
        "imported_from": {"file": str(path.resolve()), "format": fmt, "sha256": file_digest(path),
                          "keras_version": km.keras_version, "model_name": km.name, "left_out": list(km.dropped),
                          "normalization": "Rescaling layer" if km.rescaling else "pixels / 255 (no Rescaling layer)"},
        "dataset": cfg.data.dataset or None, "input_shape": list(km.input_shape), "classes": classes,
        "normalizer": norm.to_dict(), "params": km.params[0], "epochs": 0, "epochs_planned": 0,
        "monitor": cfg.callbacks.monitor, "mode": "min", "command": " ".join(sys.argv),
        "imported": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if ev is not None:
        meta.update(test_acc=ev.acc, test_loss=ev.loss)
    return meta


def _summary(path: Path, km: KerasModel, model: torch.nn.Module, ev: Evaluation | None) -> str:
    lines = [summary_text(model, km.input_shape, title=km.name), "",
             f"{SOURCE}: {path.name} (Keras {km.keras_version}); Keras counts {km.params[0]:,} params "
             f"({km.params[1]:,} trainable), cnnlab {param_counts(model)[0]:,}"]
    if ev is not None:
        lines.append(f"Test accuracy: {ev.acc:.4f}  Test loss: {ev.loss:.4f}")
        lines.append("Per-class accuracy:")
        lines += [f"  {c:<14} {a:.4f}" for c, a in ev.per_class.items()]
    return "\n".join(lines) + "\n"
