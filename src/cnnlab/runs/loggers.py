"""The loggers teams already run: TensorBoard event files and MLflow tracking, as training callbacks.

* :class:`TensorBoardLogger` (``callbacks.tensorboard``) writes ``RUN_DIR/tensorboard/``: per epoch the
  scalars ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``, ``lr`` (step = epoch, as
  Keras's TensorBoard callback), every ``callbacks.log_every_n_steps`` steps ``batch/loss`` and ``batch/lr``
  (step = optimiser step), the model graph once, and per epoch images of the first conv layer's kernels and
  of its feature maps for 3 fixed validation images (0, 7 and 26, the first tutorial's).
* :class:`MLflowLogger` (``callbacks.mlflow``) logs the flattened resolved config as params and the epoch
  metrics to an MLflow tracking store; :func:`publish` adds the final test metrics and files (summary.txt,
  report.html, model.onnx) to the same MLflow run when they are written.

Both continue on resume: TensorBoard writes into the same folder and tells TensorBoard to drop steps after
the checkpoint (``purge_step``); the MLflow run id is kept in the callback's checkpoint state and in run.json.
Only the main process logs (``trainer.is_main_process`` where a trainer has it; there is no distributed
training yet, so today that is always the one process).

The images are computed here from the model (kernels, and one forward hook), not with :mod:`cnnlab.inspect`,
which is a layer above this one: TensorBoard tiles raw (N, C, H, W) tensors itself, so nothing else is needed.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab._version import __version__
from cnnlab.config import Config, flatten, to_dict
from cnnlab.errors import CnnlabError
from cnnlab.models.summary import eval_mode
from cnnlab.runs.run_dir import META, RunDir
from cnnlab.training.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.training.trainer import Trainer

TENSORBOARD = "tensorboard"  # the event-file folder inside a run directory
IMAGE_INDICES = (0, 7, 26)  # the first tutorial's test images for feature maps
GRAPH_MAX_PARAMS = 50_000_000  # the graph is traced once; skip it for models where that is not cheap
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def require(module: str, extra: str, key: str) -> Any:
    """Imports an optional package, or raises one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CnnlabError(f"`{key}` needs the {extra} package; install it with pip install 'cnnlab[{extra}]'") from None


def epoch_scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    """TensorBoard tags and values of one epoch's metrics (the same for live logging and export-metrics)."""
    tags = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
            "accuracy/val": "val_acc", "lr": "lr"}
    return {tag: float(logs[key]) for tag, key in tags.items() if _finite(logs.get(key))}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _main_process(trainer: Trainer) -> bool:
    # Under DDP only rank 0 should log; trainers without the attribute run one process.
    return bool(getattr(trainer, "is_main_process", True))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Each image (N, C, H, W) scaled to [0, 1] by its own min and max (a flat image becomes 0)."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def first_conv_images(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The first ``nn.Conv2d``'s kernels and its outputs for a normalised batch, as images (post-activation for
    cnnlab's Keras-style Conv2D, whose activation is part of the layer).

    Args:
        model: the network.
        images: normalised input (N, C, H, W) on the model's device.

    Returns:
        ``{"filters": (O, 1|3, kh*8, kw*8), "feature_maps/<k>": (channels, 1, H, W) per image k}``, float32 in
        [0, 1] on the CPU; empty when the model has no Conv2d.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return {}
    w = conv.weight.detach().float().cpu()
    w = w if w.shape[1] in (1, 3) else w[:, :1]  # RGB kernels in colour, others by their first input channel
    out = {"filters": F.interpolate(_unit(w), scale_factor=8, mode="nearest")}  # 3x3 kernels are too small to see
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, y: seen.append(y.detach()) if not seen else None)
    try:  # eval mode keeps each submodule's own flag afterwards (a frozen BatchNorm stays in inference)
        with eval_mode(model), torch.no_grad():
            model(images)
    finally:
        handle.remove()
    maps = seen[0].float().cpu() if seen else torch.zeros(0)  # a conv the forward pass never calls: no maps
    for k in range(maps.shape[0] if maps.ndim == 4 else 0):
        out[f"feature_maps/{k}"] = _unit(maps[k].unsqueeze(1))
    return out


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` (see the module docstring).

    Args:
        run_dir: the run directory.
        every_n_steps: also log the batch loss and learning rate every this many steps (0: per epoch only).
        images: log the first conv layer's kernels and feature maps each epoch.

    Raises:
        CnnlabError: the tensorboard package is missing (one line naming ``cnnlab[tensorboard]``).
    """

    order = 70  # after the checkpoint (50) and history (60) of the epoch

    def __init__(self, run_dir: str | Path, every_n_steps: int = 50, images: bool = True) -> None:
        require("tensorboard", "tensorboard", "callbacks.tensorboard")
        # start-up time: torch.utils.tensorboard is imported only by runs that log to TensorBoard
        self._writer_cls = importlib.import_module("torch.utils.tensorboard").SummaryWriter
        self.folder = Path(run_dir) / TENSORBOARD
        self.every, self.images = every_n_steps, images
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not _main_process(trainer):
            return
        done = trainer.epoch * trainer.steps_per_epoch
        # a resumed run: the same folder; steps after the checkpoint (written before a crash) are dropped
        self.writer = self._writer_cls(str(self.folder), purge_step=done + 1 if trainer.epoch else None)
        if trainer.epoch == 0:
            self._graph(trainer)
            self._images(trainer, 0)
        self.writer.flush()

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        if self.writer is None or not self.every:
            return
        step = trainer.epoch * trainer.steps_per_epoch + batch + 1
        if step % self.every == 0:  # the only sync of the loss: every N steps
            self.writer.add_scalar("batch/loss", float(loss), step)
            self.writer.add_scalar("batch/lr", float(trainer.lr), step)

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in epoch_scalars(logs).items():
            self.writer.add_scalar(tag, value, logs["epoch"])
        self._images(trainer, logs["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _graph(self, trainer: Trainer) -> None:
        model = trainer.model
        if sum(p.numel() for p in model.parameters()) > GRAPH_MAX_PARAMS:
            return
        x = torch.zeros(1, *trainer.train_data.shape, device=trainer.engine.device)
        # A watched layer makes a spec model run layer by layer (no fused fast path), which the tracer records
        # and its check re-runs identically.
        first = next(iter(model.children()), model)
        handle = first.register_forward_hook(lambda *_: None)
        try:
            with eval_mode(model):
                self.writer.add_graph(model, x)
        except Exception as exc:  # a model the tracer cannot follow: the scalars and images still come
            print(f"note: TensorBoard graph skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})",
                  file=sys.stderr)
        finally:
            handle.remove()

    def _images(self, trainer: Trainer, step: int) -> None:
        if not self.images:
            return
        data = trainer.val_data if trainer.val_data is not None else trainer.train_data
        idx = [i for i in IMAGE_INDICES if i < len(data)] or list(range(min(3, len(data))))
        x = trainer.normalizer(data.images[torch.tensor(idx)].to(trainer.engine.device), trainer.engine.channels_last)
        pictures = first_conv_images(trainer.model, x)
        for tag, value in pictures.items():
            if tag.startswith("feature_maps/"):
                tag = f"feature_maps/image_{idx[int(tag.rsplit('/', 1)[1])]}"
            self.writer.add_images(tag, value, step)


def tracking_uri(value: str) -> tuple[str, str | None]:
    """(MLflow tracking URI, artifact folder or None) of ``callbacks.mlflow``.

    A URI (``sqlite:///...``, ``http://...``, ``file:...``, ``databricks``) is used as it is, its artifacts
    where that store puts them. A path is a local SQLite store: ``x.db``, or ``mlflow.db`` inside a folder,
    with the artifacts in ``mlruns/`` beside it (MLflow's own local layout).
    """
    if re.match(r"^[A-Za-z][\w+.-]+:", value) or value == "databricks":
        return value, None
    path = Path(value).expanduser().resolve()
    db = path if path.suffix == ".db" else path / "mlflow.db"
    return f"sqlite:///{db}", str(db.parent / "mlruns")


# MLflow's HTTP client retries 7 times with exponential back-off (minutes against a server that is down); the
# first contact only asks whether the store answers, so it gives up after one retry and 10 s a request
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@contextlib.contextmanager
def quick_probe() -> Iterator[None]:
    """MLflow's HTTP settings of :data:`PROBE_HTTP` for the block (those the user set are kept)."""
    added = {k: v for k, v in PROBE_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class MLflowLogger(Callback):
    """MLflow tracking: params (the flattened resolved config), metrics per epoch, the run id kept for resume.

    Args:
        store: ``callbacks.mlflow`` (see :func:`tracking_uri`).
        run: the run directory (its name becomes the MLflow run name; run.json records the MLflow run).
        cfg: the resolved config (logged as params; ``cfg.name`` names the MLflow experiment).
        every_n_steps: also log the batch loss every this many steps (0: per epoch only).
        state_key: key of this instance's checkpoint state.

    Raises:
        CnnlabError: mlflow is missing (one line naming ``cnnlab[mlflow]``) or the store cannot be reached.
    """

    order = 70

    def __init__(self, store: str, run: RunDir, cfg: Config, every_n_steps: int = 50, *,
                 state_key: str = "MLflowLogger") -> None:
        # start-up time: mlflow (~1.3 s to import) only for runs that log to it
        self._mlflow = require("mlflow", "mlflow", "callbacks.mlflow")
        self.uri, self.artifacts = tracking_uri(store)
        self.run, self.cfg, self.every, self._state_key = run, cfg, every_n_steps, state_key
        self.run_id: str | None = None
        self._warned = False
        try:  # reach the store now, before the run folder exists: a wrong URI fails before any training
            with quick_probe():
                self.client.search_experiments(max_results=1)
        except Exception as exc:
            raise CnnlabError(f"`callbacks.mlflow` {self.uri}: the tracking store cannot be used "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None

    @property
    def client(self):
        """An MlflowClient for the current store (made once per URI)."""
        if getattr(self, "_client_uri", None) != self.uri:
            self._client, self._client_uri = self._mlflow.MlflowClient(tracking_uri=self.uri), self.uri
        return self._client

    @property
    def state_key(self) -> str:
        return self._state_key

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self.uri = state.get("tracking_uri") or self.uri  # the store the run started in, whatever the cwd now

    def on_fit_start(self, trainer: Trainer) -> None:
        if not _main_process(trainer):
            return
        client = self.client
        recorded = self.run.meta.get("mlflow", {}) if self.run.file(META).is_file() else {}
        if self.run_id is None and recorded.get("tracking_uri") == self.uri:
            self.run_id = recorded.get("run_id")
        if self.run_id is not None:
            try:
                client.update_run(self.run_id, status="RUNNING")  # resumed: the same MLflow run goes on
            except Exception as exc:  # deleted from the store since: log into a new MLflow run
                print(f"note: MLflow run {self.run_id} cannot be continued ({str(exc).splitlines()[0][:100]}); "
                      "logging to a new one", file=sys.stderr)
                self.run_id = None
        if self.run_id is None:
            self.run_id = self._create(client)
        experiment = client.get_run(self.run_id).info.experiment_id
        self.run.update_meta(mlflow={"tracking_uri": self.uri, "experiment_id": experiment, "run_id": self.run_id})

    def _create(self, client) -> str:
        name = self.cfg.name or "cnnlab"
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=self.artifacts)
        run = client.create_run(exp_id, run_name=self.run.path.name,
                                tags={"cnnlab.run_dir": str(self.run.path.resolve()), "cnnlab.version": __version__})
        params = [self._mlflow.entities.Param(k, str(v)[:6000]) for k, v in flatten(to_dict(self.cfg)).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id

    def on_train_batch_end(self, trainer: Trainer, batch: int, loss: torch.Tensor) -> None:
        step = trainer.epoch * trainer.steps_per_epoch + batch + 1
        if self.run_id is not None and self.every and step % self.every == 0:
            self._log({"batch_loss": float(loss)}, step)

    def on_train_epoch_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.run_id is not None:
            self._log({k: logs.get(k) for k in EPOCH_METRICS}, logs["epoch"])

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.run_id is None:
            return
        done = trainer.epoch >= trainer.epochs or trainer.should_stop
        status = "FAILED" if trainer.failure else "FINISHED" if done else "KILLED"  # KILLED: interrupted
        self._safely(lambda: self.client.set_terminated(self.run_id, status))

    def _log(self, values: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._mlflow.entities.Metric(k, float(v), now, step) for k, v in values.items() if _finite(v)]
        self._safely(lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def _safely(self, call) -> None:
        """A logging call that fails mid-training warns once and lets training go on."""
        try:
            call()
        except Exception as exc:
            if not self._warned:
                self._warned = True
                print(f"note: MLflow logging failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                      "training goes on", file=sys.stderr)


def publish(run: RunDir, files: Iterable[str | Path] = (), metrics: Mapping[str, float] | None = None,
            log=print) -> bool:
    """Adds files and final metrics to the MLflow run recorded in ``run``'s run.json, if there is one.

    Called when summary.txt / results (training), report.html (``cnnlab report``) and model.onnx
    (``cnnlab export``) are written. Never fails the caller: a missing package or an unreachable store is a
    note through ``log``.

    Returns:
        Whether something was logged.
    """
    info = run.meta.get("mlflow") if run.file(META).is_file() else None
    if not info or not info.get("run_id"):
        return False
    try:
        mlflow = importlib.import_module("mlflow")  # start-up time: only for runs that log to MLflow
    except ImportError:
        log("note: this run logs to MLflow, but mlflow is not installed (pip install 'cnnlab[mlflow]'); not logged")
        return False
    try:
        client = mlflow.MlflowClient(tracking_uri=info["tracking_uri"])
        for f in files:
            if Path(f).is_file():
                client.log_artifact(info["run_id"], str(f))
        if metrics:
            now = int(time.time() * 1000)
            client.log_batch(info["run_id"], metrics=[mlflow.entities.Metric(k, float(v), now, 0)
                                                      for k, v in metrics.items() if _finite(v)])
    except Exception as exc:
        log(f"note: could not log to MLflow run {info['run_id']} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]})")
        return False
    return True
