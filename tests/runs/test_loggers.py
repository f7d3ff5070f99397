"""TensorBoard and MLflow loggers: what they write, read back with TensorBoard's EventAccumulator and MLflow's
search_runs from a real local SQLite store (no server, no network), the same TensorBoard folder and MLflow run
after a resume, only the main process logging, and one line naming the extra when a package is missing."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnlab.config import Config, TrainConfig
from cnnlab.data.tensors import Normalizer, split
from cnnlab.errors import CnnlabError
from cnnlab.runs.loggers import (
    TENSORBOARD,
    MLflowLogger,
    TensorBoardLogger,
    epoch_scalars,
    first_conv_images,
    publish,
    tracking_uri,
)
from cnnlab.runs.run_dir import RunDir
from cnnlab.training.engine import Engine
from cnnlab.training.trainer import Trainer

CPU = Engine(torch.device("cpu"), None, False)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 3))


def events(folder: Path) -> EventAccumulator:
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A local SQLite MLflow store in the test's folder; MLflow's telemetry off (no network)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def fit(toy, run: RunDir, epochs: int, store: str, *, resume: bool = False) -> Trainer:
    """Trains the small model on ``toy`` with both loggers (checkpoints in the run), resuming if asked."""
    train, val = split(toy, 0.25, seed=0)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.01)
    from cnnlab.training.callbacks import ModelCheckpoint

    callbacks = [ModelCheckpoint("val_loss", "min"), TensorBoardLogger(run.path, every_n_steps=4),
                 MLflowLogger(store, run, Config(name="toy-experiment", train=TrainConfig(lr=0.001)), every_n_steps=4)]
    trainer = Trainer(small_model(), cfg, train_data=train, val_data=val, normalizer=Normalizer(), engine=CPU,
                      callbacks=callbacks, checkpoint_dir=run.checkpoints)
    if resume:
        trainer.resume("last")
    trainer.fit()
    return trainer


def test_both_loggers_write_and_continue_after_resume(toy, tmp_path, store) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_meta(status="running")
    first = fit(toy, run, 2, store)
    second = fit(toy, run, 3, store, resume=True)
    history = second.history
    assert [m["epoch"] for m in history] == [1, 2, 3]
    # TensorBoard: one folder, a file per session, every epoch once
    assert len(list((run.path / TENSORBOARD).glob("events.out.tfevents.*"))) == 2
    ea = events(run.path / TENSORBOARD)
    tags = ea.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "batch/loss", "batch/lr"} <= set(tags["scalars"])
    loss = ea.Scalars("loss/train")
    assert [e.step for e in loss] == [1, 2, 3]
    assert all(math.isclose(e.value, m["train_loss"], rel_tol=1e-6) for e, m in zip(loss, history, strict=True))  # float32
    steps = first.steps_per_epoch  # 180 training images / 16 = 12 steps (the last batch of 4 kept)
    assert [e.step for e in ea.Scalars("batch/loss")] == list(range(4, 3 * steps + 1, 4))
    assert set(tags["images"]) == {"filters", "feature_maps/image_0", "feature_maps/image_7", "feature_maps/image_26"}
    assert [e.step for e in ea.Images("filters")] == [0, 1, 2, 3]
    assert (ea.Images("filters")[0].width, ea.Images("feature_maps/image_7")[0].height) != (0, 0)
    assert tags["graph"]
    # MLflow: one run, resumed, with params, per-epoch metrics and the run id in run.json
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    run_id = runs.loc[0, "run_id"]
    assert run.meta["mlflow"]["run_id"] == run_id and run.meta["mlflow"]["tracking_uri"] == store
    assert runs.loc[0, "params.name"] == "toy-experiment" and runs.loc[0, "params.train.lr"] == "0.001"
    assert runs.loc[0, "tags.mlflow.runName"] == "run"
    client = mlflow.MlflowClient(store)
    got = client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in got] == [(m["epoch"], m["val_acc"]) for m in history]
    assert max(m.step for m in client.get_metric_history(run_id, "batch_loss")) == 3 * steps // 4 * 4


def test_publish_adds_files_and_metrics_to_the_recorded_run(toy, tmp_path, store) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_meta(status="running")
    fit(toy, run, 1, store)
    (run.path / "summary.txt").write_text("table")
    assert publish(run, [run.path / "summary.txt", run.path / "missing.txt"], {"test_acc": 0.5}, log=print)
    run_id = run.meta["mlflow"]["run_id"]
    client = mlflow.MlflowClient(store)
    assert [a.path for a in client.list_artifacts(run_id)] == ["summary.txt"]
    assert client.get_run(run_id).data.metrics["test_acc"] == 0.5
    other = RunDir(tmp_path / "plain")
    other.path.mkdir()
    other.update_meta(status="done")
    assert not publish(other, [run.path / "summary.txt"])  # a run that logs to no MLflow: nothing happens
    notes: list[str] = []
    run.update_meta(mlflow={**run.meta["mlflow"], "run_id": "0" * 32})  # e.g. deleted from the store since
    assert not publish(run, [], {"test_acc": 0.5}, log=notes.append)  # a note, no error: the command still succeeds
    assert notes == [f"note: could not log to MLflow run {'0' * 32} (MlflowException: Run with id={'0' * 32} not found)"]


def test_only_the_main_process_logs(tmp_path, store) -> None:
    run = RunDir(tmp_path / "run")
    worker = SimpleNamespace(is_main_process=False, epoch=0, steps_per_epoch=10)
    tb, ml = TensorBoardLogger(run.path), MLflowLogger(store, run, Config())
    for cb in (tb, ml):
        cb.on_fit_start(worker)
    assert not (run.path / TENSORBOARD).exists() and ml.run_id is None
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_missing_packages_name_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails as if not installed
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(CnnlabError, match=r"^`callbacks.tensorboard` needs the tensorboard package; install it with "
                                          r"pip install 'cnnlab\[tensorboard\]'$"):
        TensorBoardLogger(tmp_path)
    with pytest.raises(CnnlabError, match=r"^`callbacks.mlflow` needs the mlflow package; .*'cnnlab\[mlflow\]'$"):
        MLflowLogger("sqlite:///x.db", RunDir(tmp_path), Config())


def test_an_unusable_store_fails_before_training(tmp_path) -> None:
    with pytest.raises(CnnlabError, match=r"^`callbacks.mlflow` file:.*: the tracking store cannot be used"):
        MLflowLogger("file:" + str(tmp_path / "mlruns"), RunDir(tmp_path), Config())  # MLflow 3 refuses file stores



def test_a_server_that_is_down_is_asked_once_with_a_retry_not_for_minutes(tmp_path, monkeypatch) -> None:
    import mlflow

    seen = {}

    def search(self, *args, **kwargs):
        seen.update({k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")})
        raise mlflow.exceptions.MlflowException("API request failed: Max retries exceeded")

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")  # the user's own setting wins
    monkeypatch.setattr(mlflow.MlflowClient, "search_experiments", search)
    with pytest.raises(CnnlabError, match=r"^`callbacks.mlflow` http://127.0.0.1:9: the tracking store cannot be "
                                          r"used \(MlflowException: API request failed"):
        MLflowLogger("http://127.0.0.1:9", RunDir(tmp_path), Config())
    assert seen == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # training's own requests keep MLflow's retries

def test_tracking_uri_of_paths_and_uris(tmp_path) -> None:
    assert tracking_uri("http://host:5000") == ("http://host:5000", None)
    assert tracking_uri("sqlite:///a/b.db") == ("sqlite:///a/b.db", None)
    assert tracking_uri(str(tmp_path / "t.db")) == (f"sqlite:///{tmp_path / 't.db'}", str(tmp_path / "mlruns"))
    assert tracking_uri(str(tmp_path / "store")) == (f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
                                                     str(tmp_path / "store" / "mlruns"))


def test_first_conv_images_keep_each_layers_mode() -> None:
    model = small_model().train()
    model[2].eval()  # a frozen BatchNorm (transfer learning) must stay in inference mode
    x = torch.randn(3, 1, 12, 12)
    pictures = first_conv_images(model, x)
    assert set(pictures) == {"filters", "feature_maps/0", "feature_maps/1", "feature_maps/2"}
    assert pictures["filters"].shape == (4, 1, 24, 24)  # 3x3 kernels drawn 8x larger
    with torch.no_grad():
        conv = model[0](x[1:2])[0]  # the layer's own output (the ReLU is a layer of its own here)
    lo, hi = conv.amin((1, 2)).view(-1, 1, 1), conv.amax((1, 2)).view(-1, 1, 1)
    maps = pictures["feature_maps/1"]
    assert maps.shape == (4, 1, 10, 10) and float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)
    assert torch.allclose(maps[:, 0] * (hi - lo) + lo, conv, atol=1e-5)  # each map scaled to [0, 1]
    assert model.training and not model[2].training
    assert first_conv_images(nn.Sequential(nn.Flatten(), nn.Linear(144, 3)), x) == {}


def test_epoch_scalars_leave_out_missing_values() -> None:
    logs = {"train_loss": 0.5, "train_acc": 0.75, "val_loss": None, "val_acc": float("nan"), "lr": 0.001}
    assert epoch_scalars(logs) == {"loss/train": 0.5, "accuracy/train": 0.75, "lr": 0.001}


@pytest.mark.slow
def test_a_configured_run_logs_its_files_to_mlflow(tmp_path, store) -> None:
    """`loggers` → config keys → build_callbacks; summary/results after training, report.html and model.onnx
    when they are written, all in the run's one MLflow run."""
    from cnnlab.app.report import build_report
    from cnnlab.runs.experiment import train
    from cnnlab.runs.options import experiment_config
    from cnnlab.serve.onnx import export_onnx

    layers = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
              {"type": "Flatten"}, {"type": "Dense", "units": "num_classes", "activation": "softmax"}]
    cfg = experiment_config(dataset="fashion-mnist-sample", epochs=1, batch_size=512, loggers=["tensorboard", "mlflow"],
                            overrides=[("model.layers", layers)])
    assert cfg.callbacks.tensorboard and cfg.callbacks.mlflow == store  # --log mlflow: $MLFLOW_TRACKING_URI
    result = train(cfg, out=tmp_path / "run", progress=False, log=lambda s: None)
    run_id = result.run.meta["mlflow"]["run_id"]
    build_report(result.run.path, log=lambda s: None)
    export_onnx(result.run.path, log=lambda s: None)
    client = mlflow.MlflowClient(store)
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["model.onnx", "report.html", "results.json",
                                                                     "summary.txt"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test_acc"] == result.test.acc and metrics["train_loss"] == result.history[0]["train_loss"]
    assert events(result.run.path / TENSORBOARD).Tags()["graph"]  # the spec model's graph traced


def test_a_run_deleted_from_the_store_is_replaced(tmp_path, store, capsys) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.update_meta(status="running")
    logger = MLflowLogger(store, run, Config())
    logger.load_state_dict({"run_id": "0" * 32, "tracking_uri": store})  # as a checkpoint would restore it
    logger.on_fit_start(SimpleNamespace(epoch=1, steps_per_epoch=10))
    assert logger.run_id != "0" * 32 and run.meta["mlflow"]["run_id"] == logger.run_id
    assert f"note: MLflow run {'0' * 32} cannot be continued" in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True)) == 1
