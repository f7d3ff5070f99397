"""Where and how tensors are computed: device, bf16 autocast where native, channels-last, threads, seeds."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class Engine:
    """Where and how tensors are computed: device, autocast dtype, memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        """bf16 autocast on the engine's device, or nothing in fp32."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX); emulated bf16 would be slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def make_engine(cfg: TrainConfig) -> Engine:
    """Resolves ``device``, ``precision`` and ``threads`` from the config for this machine."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("train.device=cuda but no CUDA device is available; use device: auto or cpu")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or available_cores())
    bf16_ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if cfg.precision == "bf16" and not bf16_ok:
        raise CnnlabError("train.precision=bf16 but this device has no native bf16; use precision: auto or fp32")
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_ok)
    return Engine(device, torch.bfloat16 if use_bf16 else None, cfg.channels_last)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (CPU and CUDA) so a CPU run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
