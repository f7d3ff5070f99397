"""Prediction engines: one interface (uint8 images in, softmax probabilities out) over PyTorch and ONNX Runtime.

Both normalise with the run's one :class:`~cnnlab.data.tensors.Normalizer`, so they see identical inputs.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.files import regular_file
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
            return run_session(self.session, t)
        out = []
        for start in range(0, len(t), self.fixed):
            part = t[start:start + self.fixed]
            n = len(part)
            if n < self.fixed:
                part = np.concatenate([part, np.zeros((self.fixed - n, *part.shape[1:]), np.float32)])
            out.append(run_session(self.session, part)[:n])
        return np.concatenate(out)


def ort_reason(exc: BaseException, limit: int = 200) -> str:
    """ONNX Runtime's message in short: its first line without the ``[ONNXRuntimeError] : 1 : FAIL :`` prefix
    or the C++ source location and signature it quotes (``/onnxruntime_src/...cc:360 void* f(size_t) ``)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S+\.(?:cc|h|cpp):\d+ [^()]*\([^()]*\)\s*", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_session(session, feed: np.ndarray) -> np.ndarray:
    """The ``probs`` output of ``session`` for the float32 batch ``feed`` (N, C, H, W).

    A graph that loads can still fail when it runs (a node that asks for 160 GB, a shape that does not
    compute): ONNX Runtime's exceptions become one line naming the file (onnxruntime's Python session keeps
    the path it was created from as ``_model_path``).

    Raises:
        CnnlabError: ONNX Runtime failed to run the graph.
    """
    try:
        return session.run(["probs"], {"input": feed})[0]
    except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException/InvalidArgument/... types
        path = getattr(session, "_model_path", None) or "the ONNX model"
        raise CnnlabError(f"{path} failed in ONNX Runtime ({ort_reason(exc)}); delete it and export the run again "
                          "(cnnlab export RUN_DIR)") from None


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
    # fatal only: ORT warns about unused initialisers of folded BatchNorms, and it would print every error
    # (in colour, on stderr) before raising it as the exception that becomes our one line
    opts.log_severity_level = 4
    if not regular_file(path, fix="delete it and export the run again (cnnlab export RUN_DIR)"):
        raise CnnlabError(f"{path} not found; export the run to ONNX first (cnnlab export RUN_DIR)")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise CnnlabError(f"{path} is not a usable ONNX model ({ort_reason(exc)}); delete it and "
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
