"""Keep freed memory in the process during training and inference: glibc's ``mallopt`` trim and mmap thresholds.

Why: a training step allocates and frees the same large blocks each time (at batch 200 the tutorial CNN's
max-pool indices are 14.7 MB, its activations 8-14 MB). With glibc's defaults the freed top of the heap is
returned to the kernel after each step (its dynamic trim threshold is twice the largest block it ever
mmapped) and grown again in the next, and every regrown page is faulted in and zeroed by the kernel:
``mnist_cnn_dropout`` spent ~27% of its time in system calls (docs/benchmarks.md, "System time"), and batched
bf16 inference lost up to half its speed the same way (same section). Fixed
thresholds (``M_TRIM_THRESHOLD`` 1 GiB; ``M_MMAP_THRESHOLD`` 32 MiB, above those blocks) keep those
pages mapped; the cost is that memory freed during training stays with the process until it exits, as with
the allocators (jemalloc, tcmalloc) PyTorch users preload for the same reason. ``CNNLAB_KEEP_HEAP=0`` leaves
glibc's defaults; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
TRIM_BYTES, MMAP_BYTES = 1 << 30, 32 << 20
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Sets the thresholds once per process (glibc on Linux, unless ``CNNLAB_KEEP_HEAP=0``); True if set."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and os.environ.get("CNNLAB_KEEP_HEAP", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
                return False
            # mallopt returns 1 on success; the mmap threshold first, so a refusal leaves trimming as it was
            _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done
