"""A small spec CNN and a CPU trainer on the toy images, for the training tests."""

from __future__ import annotations

import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.data.tensors import Normalizer, split
from cnnlab.models.spec import build_spec
from cnnlab.training.engine import Engine
from cnnlab.training.trainer import Trainer

LAYERS = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"}, {"type": "MaxPooling2D"},
          {"type": "Flatten"}, {"type": "Dropout", "rate": 0.1}, {"type": "Dense", "units": "num_classes"}]
CPU = Engine(torch.device("cpu"), None, False)


def small_model(seed: int = 0):
    """Conv4-Pool-Dropout-Dense on (1, 12, 12) toy images, 3 classes, seeded."""
    torch.manual_seed(seed)
    return build_spec(LAYERS, input_shape=(1, 12, 12), num_classes=3)


@pytest.fixture
def cpu_engine() -> Engine:
    return CPU


@pytest.fixture
def make_model():
    """``make_model(seed=0)``: the small spec CNN."""
    return small_model


@pytest.fixture
def make_trainer():
    """``make_trainer(toy, checkpoint_dir=None, callbacks=(), **train_cfg)``: a CPU trainer of the small CNN
    on 75% of ``toy``, validating on the rest (3 epochs, batch 16, lr 0.01 unless given)."""

    def build(toy, tmp_path=None, callbacks=(), **cfg):
        train, val = split(toy, 0.25, seed=0)
        c = TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 0.01, **cfg})
        return Trainer(small_model(), c, train_data=train, val_data=val, normalizer=Normalizer(), engine=CPU,
                       callbacks=list(callbacks), checkpoint_dir=tmp_path)

    return build
