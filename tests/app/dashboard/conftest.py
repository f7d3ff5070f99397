"""Fixtures of the dashboard tests: hand-written run folders (no training) and a folder of two small trained
runs that differ in one config key (shared by the API and browser tests of a session)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config

SMALL_CNN = [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
             {"type": "Conv2D", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
             {"type": "Flatten"}, {"type": "Dense", "units": "num_classes", "activation": "softmax"}]
LR = 0.003  # the second run's learning rate: the one key in which the two trained runs differ


def fake_run(root: Path, name: str, *, status: str = "done", history: list[dict] | None = None, model: str = "cnn_64x2",
             dataset: str = "mnist", test_acc: float | None = 0.9, **meta) -> Path:
    """A run folder as cnnlab train leaves it, minus the weights: run.json, config.yaml, metrics.jsonl.
    Its run.json is of the older kind (model and min_delta only in config.yaml) unless ``meta`` adds them."""
    path = root / name
    path.mkdir(parents=True)
    history = history if history is not None else [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4,
                                                    "val_acc": 0.85, "seconds": 1.0, "lr": 0.001}]
    info = {"status": status, "dataset": dataset, "params": 1000, "epochs_planned": 3, "monitor": "val_loss",
            "mode": "min", "test_acc": test_acc, "wall_seconds": 12.5, "started": "2026-01-02T03:04:05", **meta}
    (path / "run.json").write_text(json.dumps(info))
    (path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": model}, "data": {"dataset": dataset},
                                                      "callbacks": {"min_delta": 0.0}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return path


def _train(out: Path, cache: Path, **options) -> Path:
    with pytest.MonkeyPatch.context() as mp:  # a session fixture is set up before the per-test cache exists
        mp.setenv("CNNLAB_CACHE", str(cache))
        cfg = experiment_config(dataset="fashion-mnist-sample", epochs=1, batch_size=128,
                                overrides=[("model.layers", SMALL_CNN)], **options)
        assert train(cfg, out=out, progress=False, log=lambda s: None).failed is None
    return out


@pytest.fixture(scope="session")
def trained_runs(small_cnn_run, tmp_path_factory) -> Path:
    """RUNS_DIR with ``base`` (the shared small CNN run) and ``lr`` (the same with train.lr = LR)."""
    root = tmp_path_factory.mktemp("dashboard") / "runs"
    root.mkdir()
    shutil.copytree(small_cnn_run, root / "base")
    _train(root / "lr", tmp_path_factory.mktemp("cache"), lr=LR)
    return root


@pytest.fixture
def make_run():
    """:func:`fake_run`, for tests (conftest modules are not importable under --import-mode=importlib)."""
    return fake_run


@pytest.fixture
def run_async():
    """``asyncio.run`` in a thread of its own: the browser tests' Playwright keeps an event loop running in the
    main thread for the whole session, and asyncio refuses to start a second loop in a thread that has one."""

    def run(coro):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    return run
