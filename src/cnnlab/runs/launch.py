"""Starting a distributed training: ``--nproc N`` processes on this machine (``torch.multiprocessing``), or the
place that ``torchrun`` gave this process; the process group around a run; rank 0's choices for all ranks.

``--nproc N`` sets, in each child, the environment ``torchrun`` would set (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so both start the same code path.
When one process fails, ``torch.multiprocessing`` ends the others and the first error (by time) is raised
here: a :class:`~cnnlab.errors.CnnlabError` as itself (one line), anything else as :class:`WorkerFailed`
carrying the rank's traceback. Rank 0's log lines and its result come back to the caller.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.multiprocessing as mp

from cnnlab.config import Config
from cnnlab.errors import CnnlabError
from cnnlab.training import distributed
from cnnlab.training.distributed import Place
from cnnlab.training.trainer import TrainingInterrupted

T = TypeVar("T")


class WorkerFailed(RuntimeError):
    """A training process of a ``--nproc`` run raised; the message holds its rank, error and traceback."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, fn: Callable, nproc: int, port: int, box: Any, args: tuple, kwargs: dict) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = 0
    try:
        log = (lambda line: box.put(("log", line))) if local_rank == 0 else (lambda line: None)
        result = fn(*args, log=log, **kwargs)
        if local_rank == 0:
            box.put(("result", pickle.dumps(result)))
        del result
    except BaseException as exc:  # report, then fail this process: torch.multiprocessing ends the others
        kind = "user" if isinstance(exc, CnnlabError) else "signal" if isinstance(exc, KeyboardInterrupt) else ""
        box.put(("error", time.time(), local_rank, kind, getattr(exc, "signum", int(signal.SIGINT)),
                 f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        code = 0 if isinstance(exc, KeyboardInterrupt) else 1  # as torch.multiprocessing's wrapper exits
    del args, kwargs  # the caller's callbacks: freed below, with whatever they hold open
    _leave(code)


def _leave(code: int) -> None:
    """Ends this rank as a normal exit would, short of the interpreter's teardown.

    gloo's threads can still hold tensors at exit, and freeing them while the interpreter is torn down aborts
    the process (SIGABRT: it failed a finished job at random). So what the teardown does for the user's code
    is done here, with the interpreter whole: objects left behind are freed (a callback's file is closed),
    ``atexit`` handlers run, files still open are flushed; then the process ends at once.
    """
    gc.collect()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for obj in gc.get_objects():
        with contextlib.suppress(Exception):
            if isinstance(obj, io.IOBase) and not obj.closed and obj.writable():
                obj.flush()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def spawn(fn: Callable[..., T], nproc: int, *args: Any, log: Callable[[str], None], **kwargs: Any) -> T:
    """Runs ``fn(*args, log=..., **kwargs)`` in ``nproc`` new processes on this machine, as ranks 0..nproc-1.

    Args:
        fn: a module-level function (it is pickled by name), e.g. :func:`cnnlab.runs.experiment.train`.
        nproc: processes to start.
        log: receives rank 0's log lines, in this process.
        *args, **kwargs: passed on (pickled: callbacks given must be picklable).

    Returns:
        What ``fn`` returned on rank 0.

    A SIGTERM sent to this process is passed on to the ranks (they finish the step, rank 0 saves, all stop);
    Ctrl-C reaches them directly (same process group).

    Raises:
        CnnlabError: a rank's user error (the earliest), one line.
        TrainingInterrupted: the ranks stopped on a signal (after saving).
        WorkerFailed: a rank's other error (the earliest), with its traceback.
    """
    ctx = mp.get_context("spawn")
    box = ctx.SimpleQueue()
    procs = mp.start_processes(_worker, args=(fn, nproc, _free_port(), box, args, kwargs), nprocs=nproc,
                               join=False, start_method="spawn")
    messages: list[tuple] = []

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for p in procs.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    main = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGTERM, forward) if main else None

    def drain() -> None:
        while not box.empty():
            item = box.get()
            if item[0] == "log":
                log(item[1])
            else:
                messages.append(item)

    try:
        # when a rank fails, the others get 3 s to end, then SIGTERM, 3 s more, then SIGKILL (a rank stuck
        # outside a collective would otherwise keep the job for torch's default 30 s grace)
        while not procs.join(timeout=0.2, grace_period=3.0):
            drain()
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        drain()
        _raise_first(messages, str(exc), received, exc)
    except KeyboardInterrupt:  # the children got the signal too: let them save their checkpoint
        for p in procs.processes:
            p.join(timeout=60)
        drain()
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    drain()
    results = [m for m in messages if m[0] == "result"]
    if not results:  # a rank stopped on a signal ends "cleanly" for torch.multiprocessing
        _raise_first(messages, "rank 0 ended without a result")
    return pickle.loads(results[0][1])


def _raise_first(messages: list[tuple], fallback: str, received: Sequence[int] = (),
                 failure: BaseException | None = None) -> None:
    """Raises the error that explains the job's end (see :func:`spawn`).

    A user error from any rank comes first: the other ranks' errors are then its echoes (a closed connection
    when that rank left the process group), whatever their times. Then a rank killed by a signal it did not
    report: the others' errors follow from its death. Then the earliest error reported. A signal this
    launcher passed on that ended ranks before they could report (during start-up) is a stop on that signal.
    """
    errors = sorted(m for m in messages if m[0] == "error")
    users = [m for m in errors if m[3] == "user"]
    if users:
        raise CnnlabError(users[0][5].partition(": ")[2])
    dead = getattr(failure, "error_index", None) if isinstance(failure, mp.ProcessExitedException) else None
    if dead is not None and failure.signal_name and not received and all(m[2] != dead for m in errors):
        raise WorkerFailed(f"rank {dead} was ended by {failure.signal_name} (killed from outside, or out of "
                           "memory: see the system log) and reported nothing; the other ranks stopped with it")
    if not errors:
        if received:
            raise TrainingInterrupted(received[0], None)
        raise WorkerFailed(fallback)
    _, _, rank, kind, signum, message, trace = errors[0]
    if kind == "signal":
        raise TrainingInterrupted(signum, None)
    raise WorkerFailed(f"rank {rank} failed: {message}\n{trace}")


@contextlib.contextmanager
def process_group(place: Place | None, device: str, timeout_s: float) -> Iterator[None]:
    """Inside: this process is in the job's process group (when ``place`` is not None; ``device`` is the
    config's ``train.device``)."""
    if place is None:
        yield
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    distributed.start(place, "cuda" if cuda else "cpu", timeout_s)
    try:
        yield
    finally:
        distributed.stop()


def rank_threads(place: Place, threads: int) -> None:
    """Sets this rank's CPU threads: ``threads`` when given, else the user's ``OMP_NUM_THREADS``, else
    cores // processes on this machine."""
    n = threads or distributed.threads_per_rank(place) or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(max(1, n))


def lead_decides(place: Place | None, choose: Callable[[], T]) -> T:
    """``choose()`` on rank 0 and its value on every rank (alone: just ``choose()``); a :class:`CnnlabError`
    raised by rank 0 is raised on every rank, so no rank goes on alone."""
    if place is None:
        return choose()
    outcome: tuple[str, Any] = ("ok", None)
    if place.lead:
        try:
            outcome = ("ok", choose())
        except CnnlabError as exc:
            outcome = ("error", str(exc))
    outcome = distributed.from_lead(outcome)
    if outcome[0] == "error":
        raise CnnlabError(outcome[1])
    return outcome[1]


def lead_first(place: Place | None, work: Callable[[], T]) -> T:
    """``work()`` on rank 0, then on the others (e.g. preparing a data cache that rank 0 writes once)."""
    if place is None:
        return work()
    if place.lead:
        value = work()
        distributed.barrier()
        return value
    distributed.barrier()
    return work()


def check_launch(cfg: Config, place: Place | None, log: Callable[[str], None]) -> None:
    """Refuses what a distributed run cannot do, before any process starts work."""
    world = place.world_size if place is not None else cfg.train.nproc
    if place is not None and cfg.train.nproc > 1 and cfg.train.nproc != place.world_size and place.lead:
        log(f"note: `train.nproc` {cfg.train.nproc} is ignored: a launcher started this job with "
            f"{place.world_size} process(es)")
    if world <= 1:
        return
    distributed.per_rank_batch(cfg.train.batch_size, world)
    cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    if cfg.train.sync_bn and not cuda and (place is None or place.lead):
        log("note: `train.sync_bn` needs CUDA (SyncBatchNorm cannot run on CPU); each process normalises by its "
            "own batch and DDP broadcasts rank 0's BatchNorm running statistics")
    if cfg.model.freeze:
        raise CnnlabError("`model.freeze` is not supported with several processes (DDP needs the same trainable "
                          "parameters throughout); train it with `train.nproc` 1")
