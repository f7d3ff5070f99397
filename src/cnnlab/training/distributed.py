"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` process groups and
``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA). Nothing here communicates by itself.

A process learns its place from the environment that ``torchrun`` (or ``cnnlab train --nproc N``) sets:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``. Every rank
visits its share ``perm[:N - N % W][rank::W]`` of the (seed, epoch) order; metrics are summed over ranks
(never averages of averages, never padded shards: pytorch#25162, vision#4559); rank 0 alone writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.data.tensors import ImageData, Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.training.engine import Engine, available_cores
from cnnlab.training.epoch import EpochProgress, evaluate_sums
from cnnlab.training.metrics import Evaluation


@dataclass(frozen=True)
class Place:
    """Where this process stands in a distributed run.

    Attributes:
        rank: global rank, 0..world_size-1 (0 writes).
        world_size: processes in the job, all machines together.
        local_rank: rank on this machine (picks the GPU).
        local_world_size: processes on this machine (shares its cores).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def lead(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


def place_from_env(env: dict[str, str] | None = None) -> Place | None:
    """The :class:`Place` that a launcher (torchrun, ``--nproc``) put in the environment, or None alone.

    Raises:
        CnnlabError: RANK/WORLD_SIZE that are not integers.
    """
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        place = Place(int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])),
                      int(env.get("LOCAL_WORLD_SIZE", world)))
    except ValueError:
        raise CnnlabError("the environment's RANK/WORLD_SIZE/LOCAL_RANK are not integers; start the job with "
                          "torchrun") from None
    return place


def start(place: Place, device: str, timeout_s: float) -> None:
    """Joins the process group (``env://``): gloo for CPU, NCCL for CUDA, with a short collective timeout so that
    a dead rank ends the job in ``timeout_s`` seconds rather than PyTorch's default 30 minutes.

    Args:
        place: this process's place.
        device: ``cpu`` or ``cuda`` (the training device).
        timeout_s: seconds a collective waits for the other ranks.
    """
    if dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(place.local_rank)  # ``cuda`` now means this rank's GPU
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s),
                            rank=place.rank, world_size=place.world_size)


def stop() -> None:
    """Leaves the process group (no-op alone)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def threads_per_rank(place: Place, cores: int | None = None, env: dict[str, str] | None = None) -> int | None:
    """The CPU threads each rank should use: cores // processes on this machine (at least 1); None when the
    user chose (``OMP_NUM_THREADS`` set by them, not torchrun's default of 1).

    torchrun sets ``OMP_NUM_THREADS=1`` when it is unset and marks its workers with ``TORCHELASTIC_RUN_ID``;
    that 1 is its default, not the user's choice, so it is overridden (``train.threads`` always wins).
    """
    env = os.environ if env is None else env
    omp = env.get("OMP_NUM_THREADS")
    if omp is not None and not (omp == "1" and "TORCHELASTIC_RUN_ID" in env):
        return None
    return max(1, (cores or available_cores()) // max(1, place.local_world_size))


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The images each rank takes per step: the global ``train.batch_size`` split evenly.

    Raises:
        CnnlabError: a batch that does not divide among the processes.
    """
    if batch_size % world_size:
        raise CnnlabError(f"`train.batch_size` {batch_size} does not divide among {world_size} processes (it is the "
                          f"global batch); use a multiple of {world_size}")
    return batch_size // world_size


def wrap(model: nn.Module, engine: Engine, sync_bn: bool) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (which stays the module to save and evaluate).

    Args:
        sync_bn: convert BatchNorm to ``SyncBatchNorm`` first (CUDA only, as torchvision's references do;
            on CPU ``SyncBatchNorm`` cannot run, and DDP broadcasts rank 0's BatchNorm buffers instead).
    """
    if sync_bn and engine.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [torch.cuda.current_device()] if engine.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_sum(*tensors: torch.Tensor) -> None:
    """Sums each tensor over all ranks, in place."""
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def barrier() -> None:
    """Waits for every rank (no-op alone)."""
    if dist.is_initialized():
        dist.barrier()


def from_lead(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small decisions), or ``obj`` alone."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: int | None, device: torch.device | str = "cpu") -> int | None:
    """The largest ``flag`` any rank holds (None = 0): a signal seen by one rank stops all at the same step.

    ``device``: where the group's backend reduces (NCCL: the rank's GPU).
    """
    t = torch.tensor([flag or 0], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t) or None


def global_progress(progress: EpochProgress) -> EpochProgress:
    """The epoch's sums over all ranks (the steps are the same on every rank)."""
    seen = torch.tensor(progress.seen, dtype=torch.long, device=progress.correct.device)
    loss, correct = progress.loss_sum.detach().clone(), progress.correct.clone()
    all_sum(loss, correct, seen)
    return EpochProgress(progress.step, loss, correct, int(seen))


def epoch_metrics(progress: EpochProgress) -> tuple[float, float]:
    """(mean training loss, accuracy) of the epoch over all ranks, as one process would report them."""
    total = global_progress(progress)
    seen = max(total.seen, 1)
    return float(total.loss_sum) / seen, int(total.correct) / seen


def shard_rows(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous, unpadded rows [start, stop) of an evaluation set of ``n`` images."""
    return rank * n // world_size, (rank + 1) * n // world_size


@torch.inference_mode()
def evaluate_shared(model: nn.Module, data: ImageData, *, normalizer: Normalizer, engine: Engine,
                    batch_size: int = 1000, tta: str | None = None) -> Evaluation:
    """:func:`~cnnlab.training.epoch.evaluate` with the set split among the ranks: each evaluates its unpadded
    rows through the unwrapped ``model``, then the loss sum (float64), the sample count and the int64 confusion
    matrix are summed (``all_reduce``). The result equals a one-process evaluation; the loss up to the order of
    float64 additions (exactly when the batches are the same images).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    a, b = shard_rows(len(data), rank, world)
    part = ImageData(data.images[a:b], data.labels[a:b], data.classes, data.name)
    loss_sum, conf, _ = evaluate_sums(model, part, normalizer=normalizer, engine=engine, batch_size=batch_size,
                                      tta=tta)
    device = engine.device if engine.device.type == "cuda" else torch.device("cpu")  # NCCL needs CUDA tensors
    loss_sum, conf = loss_sum.to(device), conf.to(device)
    count = torch.tensor(b - a, dtype=torch.long, device=device)
    all_sum(loss_sum, conf, count)
    n = max(int(count), 1)
    conf = conf.cpu()
    return Evaluation(float(loss_sum) / n, float(conf.diag().sum()) / n, conf, data.classes)

