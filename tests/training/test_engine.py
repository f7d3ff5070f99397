"""The engine: device, precision flags, autocast, threads and seeds."""

import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError
from cnnlab.training.engine import Engine, available_cores, cpu_has_bf16, make_engine, seed_everything


def test_engine_respects_precision_flags():
    assert make_engine(TrainConfig(precision="fp32")).amp_dtype is None
    e = make_engine(TrainConfig(precision="auto"))
    assert e.precision in ("bf16", "fp32") and e.device.type in ("cpu", "cuda")


def test_precision_autocast_and_memory_format():
    fp32 = Engine(torch.device("cpu"), None, False)
    assert fp32.precision == "fp32" and isinstance(fp32.autocast(), nullcontext)
    bf16 = Engine(torch.device("cpu"), torch.bfloat16, True)
    assert bf16.precision == "bf16"
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert make_engine(TrainConfig(precision="fp32", channels_last=False, device="cpu")) == fp32


def test_auto_uses_bf16_exactly_where_it_is_native():
    e = make_engine(TrainConfig(device="cpu"))
    assert e.precision == ("bf16" if cpu_has_bf16() else "fp32")
    if not cpu_has_bf16():
        with pytest.raises(CnnlabError, match="train.precision=bf16 but this device has no native bf16"):
            make_engine(TrainConfig(device="cpu", precision="bf16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(CnnlabError, match="train.device=cuda but no CUDA device is available"):
        make_engine(TrainConfig(device="cuda"))


def test_threads_follow_the_config():
    before = torch.get_num_threads()
    try:
        make_engine(TrainConfig(device="cpu", threads=1))
        assert torch.get_num_threads() == 1
        make_engine(TrainConfig(device="cpu"))
        assert torch.get_num_threads() == available_cores() >= 1
    finally:
        torch.set_num_threads(before)


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(3)
    first = draw()
    seed_everything(3)
    assert draw() == first
    seed_everything(4)
    assert draw() != first
