"""Native CPU kernel for the tutorials' first block (small-fan-in Conv2D → 2x2 max-pool → ReLU) in training
and in plain inference.

Why: in eager PyTorch this block costs more than the rest of the first tutorial's CNN together on a 2-core
CPU — a 1-channel convolution is a poor fit for oneDNN, and the 26x26x64 intermediate goes through
several full-size passes (pool indices, zero-filled gradient, scatter, weight GEMM). ``convpool.c`` does
the block in one pass per image and keeps only the pooled output plus a one-byte argmax. It is compiled
once with the system C compiler into the cnnlab cache and called through ctypes (which releases the GIL,
so a batch is split over the intra-op threads). Without a compiler the models fall back to the eager
path; ``CNNLAB_NATIVE=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_path, cache_dir

SOURCE = Path(__file__).with_name("convpool.c")
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None
_pool: ThreadPoolExecutor | None = None
MAX_K = 64


def _build(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compiles convpool.c into the cache (once per source, compiler and flags) and loads it.

    ``defines``: extra ``-D`` flags; the tests build ``-DCONVPOOL_PORTABLE`` to check the portable loops
    against the AVX-512 ones on a machine that has both.
    """
    src = SOURCE.read_bytes()
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise OSError("no C compiler (gcc/cc) on PATH")
    flags = ["-O3", "-march=native", "-shared", "-fPIC", *defines]
    key = hashlib.sha256(src + " ".join([cc, *flags]).encode() + os.uname().machine.encode()).hexdigest()[:16]
    lib = cache_dir() / "native" / f"convpool-{key}.so"
    if not lib.is_file():
        with atomic_path(lib, suffix=".so") as tmp:  # two processes building at once never load half a library
            subprocess.run([cc, *flags, "-o", str(tmp), str(SOURCE)], check=True, capture_output=True, timeout=120)
    dll = ctypes.CDLL(str(lib))
    p, i = ctypes.c_void_p, ctypes.c_int
    dll.convpool_forward.argtypes = [p, p, p, p, i, p] + [i] * 8
    dll.convpool_backward.argtypes = [p, p, i, p, p, p] + [i] * 8
    dll.convpool_forward.restype = dll.convpool_backward.restype = i
    return dll


def library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None where it cannot be built (or is turned off)."""
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is None and _failed is None:
            if os.environ.get("CNNLAB_NATIVE", "1") == "0":
                _failed = "turned off by CNNLAB_NATIVE=0"
            else:
                try:
                    _lib = _build()
                except (OSError, subprocess.SubprocessError, CnnlabError) as exc:
                    # no compiler, a compiler that fails, or a cache it cannot write (CnnlabError from
                    # atomic_path): the kernel is an optimisation, so training goes on without it
                    _failed = f"native kernel unavailable ({exc}); using the eager path"
    return _lib


def supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel applies: CPU tensors, fan-in ≤ 64, 16..1024 filters in steps of 16 (the limits
    ``convpool.c`` checks), and it could be built."""
    f, c, kh, kw = weight.shape
    return (x.device.type == "cpu" and not x.requires_grad and f % 16 == 0 and f <= 1024 and c * kh * kw <= MAX_K
            and x.shape[2] >= kh + 1 and x.shape[3] >= kw + 1 and library() is not None)


def _chunks(n: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), n))
    step = -(-n // parts)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _run(calls) -> None:
    global _pool
    if len(calls) == 1:
        results = [calls[0]()]
    else:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="cnnlab-native")
        futures = [_pool.submit(c) for c in calls[1:]]
        results = [calls[0](), *(fut.result() for fut in futures)]  # the calling thread takes the first chunk
    if any(results):
        raise RuntimeError("native convpool kernel rejected its arguments")


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _out_dtype() -> torch.dtype:
    """bf16 under CPU bf16 autocast (what the next layer casts the block's output to anyway: writing it in the
    kernel saves that full-size cast pass, and its gradient's, with the same rounding), else fp32."""
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


class ConvPoolReLU(torch.autograd.Function):
    """relu(max_pool2d(conv2d(x, weight, bias), 2)) for a valid stride-1 conv; output channels-last, fp32, or
    bf16 under bf16 autocast (computed in fp32 either way)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        lib = library()
        x = x.float().contiguous()
        n, c, h, w = x.shape
        f, _, kh, kw = weight.shape
        h2, w2 = (h - kh + 1) // 2, (w - kw + 1) // 2
        wt = weight.detach().float().reshape(f, -1).t().contiguous()  # (K, F)
        b = bias.detach().float().contiguous()
        out = torch.empty(n, h2, w2, f, dtype=_out_dtype())
        bf16 = int(out.dtype == torch.bfloat16)
        code = torch.empty(n, h2, w2, f, dtype=torch.uint8)  # pool winner and ReLU mask: all the backward needs
        _run([lambda a=a, z=z: lib.convpool_forward(_ptr(x), _ptr(wt), _ptr(b), _ptr(out), bf16, _ptr(code), a, z,
                                                    c, h, w, kh, kw, f) for a, z in _chunks(n)])
        ctx.save_for_backward(x, code)
        ctx.kernel = (kh, kw)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        lib = library()
        x, code = ctx.saved_tensors
        n, c, h, w = x.shape
        kh, kw = ctx.kernel
        f = code.shape[-1]
        g = grad.permute(0, 2, 3, 1)  # (N, H2, W2, F); already contiguous when it comes channels-last
        g = g.contiguous() if g.dtype == torch.bfloat16 else g.float().contiguous()
        bf16 = int(g.dtype == torch.bfloat16)
        parts = _chunks(n)
        gws = torch.zeros(len(parts), c * kh * kw, f)
        gbs = torch.zeros(len(parts), f)
        _run([lambda i=i, a=a, z=z: lib.convpool_backward(_ptr(x), _ptr(g), bf16, _ptr(code), _ptr(gws[i]),
                                                          _ptr(gbs[i]), a, z, c, h, w, kh, kw, f)
              for i, (a, z) in enumerate(parts)])
        grad_w = gws.sum(0).t().reshape(f, c, kh, kw)
        return None, grad_w, gbs.sum(0)
