"""Heavy computations (a test-set pass, attribution, activation maximisation) off the event loop.

Each job runs in a small thread pool and the request waits at most a timeout for it: past that it gets a
"still computing" answer (HTTP 503 with Retry-After) while the job finishes and leaves its result in the
cache, so the page stays responsive and a retry picks the result up. Identical jobs that are in flight at
the same time run once. PyTorch releases the GIL inside its kernels, so the server keeps answering other
requests (the runs table, live curves) while a job computes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(Exception):  # noqa: N818 - a state, not a failure
    """A job is still running after the request's timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"still computing after {seconds:g} s; the result will be ready on a retry")
        self.seconds = seconds


class Jobs:
    """A thread pool with per-request timeouts and de-duplication of identical in-flight jobs.

    Args:
        workers: threads (2 keeps a 2-core machine busy without starving the server).
        timeout: default seconds a request waits.
    """

    def __init__(self, workers: int = 2, timeout: float = 30.0) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="cnnlab-dashboard")
        self.timeout = timeout
        self._inflight: dict[Hashable, Future] = {}
        # re-entrant: a job that is already done runs its done-callback (which takes the lock) inside submit
        self._lock = threading.RLock()

    def submit(self, key: Hashable, fn: Callable[[], T]) -> Future:
        """The future of job ``key``: the one in flight, or ``fn`` started now."""
        with self._lock:
            fut = self._inflight.get(key)
            if fut is None:
                fut = self.pool.submit(fn)
                self._inflight[key] = fut
                fut.add_done_callback(lambda f, k=key: self._forget(k, f))
            return fut

    def _forget(self, key: Hashable, fut: Future) -> None:
        with self._lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]

    async def run(self, key: Hashable, fn: Callable[[], T], timeout: float | None = None) -> Any:
        """Runs ``fn`` as job ``key`` and waits for it at most ``timeout`` seconds.

        Raises:
            Busy: the job is still running (it keeps running).
            Exception: whatever ``fn`` raised.
        """
        limit = self.timeout if timeout is None else timeout
        fut = self.submit(key, fn)
        try:
            # shield: a timeout or a client going away must not cancel the shared job
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), limit)
        except asyncio.TimeoutError:
            raise Busy(limit) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
