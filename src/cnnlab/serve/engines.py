"""Prediction engines: one interface (uint8 images in, softmax probabilities out) over PyTorch and ONNX Runtime.

Both normalise with the run's one :class:`~cnnlab.data.tensors.Normalizer`, so they see identical inputs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.native.heap import keep_freed_memory

ENGINES = ("auto", "torch", "onnx")


class TorchEngine:
    """uint8 (N, C, H, W) → probabilities with a PyTorch model (eval mode, fp32, ``inference_mode``).

    The input goes through the run's :class:`~cnnlab.data.tensors.Normalizer`, as in training. bf16
    autocast and channels-last are deliberately not used: bf16 is up to ~2x faster on batches but moved a
    trained cnn_64x2's probabilities by 5.7e-3 (far beyond the 1e-4 agreement with onnxruntime), and
    channels-last made no measurable difference (benchmarks/inference_speed.py).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, normalizer: Normalizer) -> None:
        self.model = model.eval()
        self.normalizer = normalizer
        keep_freed_memory()  # batched prediction frees and reallocates its activations: keep them (native/heap.py)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(self.normalizer(torch.from_numpy(x))).float().softmax(1).numpy()


class OrtEngine:
    """uint8 (N, C, H, W) → probabilities with an onnxruntime session on an exported graph.

    Normalises with the run's :class:`~cnnlab.data.tensors.Normalizer` constants (the same float32
    arithmetic as PyTorch's path) and reads the ``probs`` output; batches for a fixed-batch file are split
    and zero-padded to its size.
    """

    name = "onnx"

    def __init__(self, session, normalizer: Normalizer, channels: int) -> None:
        self.session = session
        self.scale, self.shift = normalizer.numpy_scale_shift(channels)
        dim = session.get_inputs()[0].shape[0]
        self.fixed = dim if isinstance(dim, int) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = x.astype(np.float32)
        t *= self.scale
        t -= self.shift
        if self.fixed is None:
            return self.session.run(["probs"], {"input": t})[0]
        out = []
        for start in range(0, len(t), self.fixed):
            part = t[start:start + self.fixed]
            n = len(part)
            if n < self.fixed:
                part = np.concatenate([part, np.zeros((self.fixed - n, *part.shape[1:]), np.float32)])
            out.append(self.session.run(["probs"], {"input": part})[0][:n])
        return np.concatenate(out)


def ort_session(path: str | Path, *, threads: int | None = None, spin: bool = True):
    """An onnxruntime CPU session with full graph optimisation.

    Args:
        path: the .onnx file.
        threads: intra-op threads (default: onnxruntime's, one per core).
        spin: let idle worker threads spin-wait between runs: lower latency, but the spinning costs CPU
            that other processes could use.

    Raises:
        CnnlabError: the file is missing or not a valid ONNX model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is a chain: no branches to run in parallel
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: ORT warns about unused initialisers of folded BatchNorms
    if not Path(path).is_file():
        raise CnnlabError(f"{path} not found; export the run to ONNX first (cnnlab export RUN_DIR)")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        reason = str(exc).splitlines()[0][:160]
        raise CnnlabError(f"{path} is not a usable ONNX model ({reason}); delete it and "
                          "export the run again (cnnlab export RUN_DIR)") from None


def median_latency(engine, shape: tuple[int, int, int], budget: float = 0.25, reps: int = 25) -> float:
    """Median seconds for one image, from up to ``reps`` timed calls within ``budget`` seconds."""
    x = np.zeros((1, *shape), np.uint8)
    for _ in range(3):  # warm-up: first calls allocate and pick kernels
        engine(x)
    times: list[float] = []
    stop = time.perf_counter() + budget
    while len(times) < reps and (len(times) < 3 or time.perf_counter() < stop):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
