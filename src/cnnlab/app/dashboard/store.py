"""What the dashboard keeps between requests: the index, loaded runs, uploaded images, and each run's cache.

A :class:`RunContext` is a run loaded for computing (its model, test set and test-set probabilities
through :class:`cnnlab.views.ViewContext`, predictions through :class:`cnnlab.serve.predict.Predictor`).
Its lock serialises the computations on one model: forward hooks of two requests must never see each
other's passes. Results worth keeping go to ``RUN/.cache/dashboard/``, the only place the dashboard
writes, keyed by the weights' SHA-256 so retrained weights never meet stale results; arrays are stored
with ``numpy.save`` and read without pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.app.dashboard.index import RunIndex, RunRow
from cnnlab.app.dashboard.jobs import Jobs
from cnnlab.errors import CnnlabError
from cnnlab.io import cache_dir, file_digest, write_bytes_atomic
from cnnlab.runs.run_dir import RunDir
from cnnlab.serve.engines import TorchEngine
from cnnlab.serve.predict import Predictor
from cnnlab.views import ViewContext

CACHE = Path(".cache") / "dashboard"
MAX_CONTEXTS = 4  # loaded runs kept (models + test sets); compare needs up to 4 at once
MAX_UPLOADS = 64


class NotFound(Exception):  # noqa: N818 - an HTTP 404, raised by lookups
    """No such run, file, image or layer (HTTP 404)."""


class DiskCache:
    """Files in ``RUN/.cache/dashboard``; a run folder that cannot be written simply caches nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get_bytes(self, name: str) -> bytes | None:
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None

    def put_bytes(self, name: str, data: bytes) -> None:
        with contextlib.suppress(OSError):  # read-only run folder, full disk: returned, just not kept
            write_bytes_atomic(self.folder / name, data)

    def get_array(self, name: str) -> np.ndarray | None:
        data = self.get_bytes(name)
        if data is None:
            return None
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):  # a damaged cache file is recomputed
            return None

    def put_array(self, name: str, arr: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        self.put_bytes(name, buf.getvalue())

    def cached(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        arr = self.get_array(name)
        if arr is None:
            arr = compute()
            self.put_array(name, arr)
        return arr


class RunContext:
    """A run loaded for computing (built inside a job: loading a model takes a moment).

    Raises:
        CnnlabError: the run has no weights yet or cannot be loaded.
    """

    def __init__(self, row: RunRow) -> None:
        self.row = row
        self.view = ViewContext(row.path)
        self.lock = threading.RLock()
        self.weights = self.view.loaded.run.weights_path()
        self.digest = file_digest(self.weights, "sha256")
        self.cache = DiskCache(row.path / CACHE)
        self.memo: dict[str, Any] = {}  # small results kept with the loaded run (e.g. its layer rows)
        cfg = self.view.loaded.cfg
        self.predictor = Predictor(TorchEngine(self.view.model, self.view.normalizer), self.view.classes,
                                   self.view.input_shape, resize=cfg.data.resize)

    @staticmethod
    def weights_file(row: RunRow) -> Path:
        """The weights a context of ``row`` would load (final, or the last checkpoint while training)."""
        return RunDir(row.path).weights_path()

    @property
    def model(self) -> torch.nn.Module:
        return self.view.model

    @property
    def classes(self) -> tuple[str, ...]:
        return self.view.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.view.input_shape

    def key(self, *parts: Any) -> str:
        """A cache file stem for a result of these weights and these arguments."""
        text = json.dumps([self.digest, *parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def probs(self) -> torch.Tensor:
        """(N, classes) fp32 test-set probabilities of the run's weights (computed once, then from the cache)."""
        with self.lock:
            arr = self.cache.cached(f"probs-{self.digest[:16]}.npy",
                                    lambda: self.view.evaluation.probs.float().numpy())
        if arr.shape != (len(self.view.test), len(self.classes)):
            raise CnnlabError("the cached test-set probabilities do not match the test set; delete "
                              f"{self.cache.folder} and reload")
        return torch.from_numpy(arr)

    def test_image(self, index: int) -> tuple[torch.Tensor, int]:
        """uint8 (C, H, W) test image ``index`` and its label."""
        n = len(self.view.test)
        if not 0 <= index < n:
            raise NotFound(f"test image {index} does not exist; the test set has {n:,} images (0..{n - 1})")
        return self.view.test.images[index], int(self.view.test.labels[index])


class Dashboard:
    """The state of one dashboard server.

    Args:
        runs_dir: RUNS_DIR.
        display: how commands shown on the page name RUNS_DIR (as the user typed it).
        upload_limit: largest upload in bytes.
        job_timeout: seconds a request waits for a heavy computation.
        workers: threads for heavy computations.
    """

    def __init__(self, runs_dir: str | os.PathLike, *, display: str | None = None, upload_limit: int = 20 << 20,
                 job_timeout: float = 30.0, workers: int = 2) -> None:
        self.root = Path(runs_dir)
        self.real_root = self.root.resolve()
        self.display = display if display is not None else str(runs_dir)
        digest = hashlib.sha256(str(self.real_root).encode()).hexdigest()[:16]
        self.index = RunIndex(self.root, store=cache_dir() / "dashboard" / f"index-{digest}.json")
        self.jobs = Jobs(workers, job_timeout)
        self.upload_limit = upload_limit
        self.uploads: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._contexts: OrderedDict[tuple, RunContext] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def row(self, run_id: str) -> RunRow:
        """The index row of ``run_id``.

        Raises:
            NotFound: no run has this id (ids come from the index; a path is never looked up).
        """
        row = self.index.get(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r} under {self.display}")
        return row

    def context(self, row: RunRow) -> RunContext:
        """The loaded run (kept for the next request; reloaded when its weights file changes)."""
        try:
            weights = RunContext.weights_file(row)
            st = weights.stat()
        except (CnnlabError, OSError):
            raise CnnlabError(f"run {row.name} has no weights yet (no model.safetensors or checkpoint); "
                              "wait for its first epoch") from None
        key = (row.id, str(weights), st.st_mtime_ns, st.st_size)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is not None:
                self._contexts.move_to_end(key)
                return ctx
        with self._lock:
            loading = self._loading.setdefault(row.id, threading.Lock())
        with loading:  # two requests for one run load its model once
            with self._lock:
                ctx = self._contexts.get(key)
            if ctx is None:
                ctx = RunContext(row)
        with self._lock:
            for old in [k for k in self._contexts if k[0] == row.id and k != key]:
                del self._contexts[old]
            self._contexts[key] = ctx
            while len(self._contexts) > MAX_CONTEXTS:
                self._contexts.popitem(last=False)
        return ctx

    def add_upload(self, shape: tuple[int, ...], pixels: torch.Tensor) -> str:
        """Keeps a decoded upload (in memory only) and returns its image key ``u-<hash>``."""
        key = "u-" + hashlib.sha256(repr(tuple(shape)).encode() + pixels.numpy().tobytes()).hexdigest()[:20]
        with self._lock:
            self.uploads[key] = pixels
            self.uploads.move_to_end(key)
            while len(self.uploads) > MAX_UPLOADS:
                self.uploads.popitem(last=False)
        return key

    def image(self, ctx: RunContext, key: str) -> tuple[torch.Tensor, int | None]:
        """uint8 (C, H, W) pixels and the true label (None for uploads) of an image key.

        Keys: ``t-<index>`` a test image, ``u-<hash>`` an upload of this server.

        Raises:
            NotFound: an unknown key, or an upload of another input shape.
        """
        if key.startswith("t-") and key[2:].isdigit():
            return ctx.test_image(int(key[2:]))
        with self._lock:
            pixels = self.uploads.get(key)
        if pixels is None:
            raise NotFound(f"no image {key!r}; pick a test image or upload one again")
        if tuple(pixels.shape) != tuple(ctx.input_shape):
            raise NotFound(f"image {key!r} was decoded for another input shape; upload it for this run")
        return pixels, None

    def path_text(self, row: RunRow) -> str:
        """The run's folder as a command line names it (``runs/fashion_mnist_cnn``)."""
        base = self.display.rstrip("/") or "."
        text = base if row.path == self.root else f"{base}/{row.name}"
        return shlex.quote(text)

    def close(self) -> None:
        self.jobs.close()

