"""Data-parallel scaling: 1 vs 2 processes on this machine, and a per-step time model for N GPUs x M nodes.

Measured here (gloo on CPU, fp32, the tutorial CNN ``cnn_64x2`` on the bundled Fashion-MNIST sample, global
batch ``--batch``, each rank ``batch / W`` images and ``cores // W`` threads, as ``cnnlab train --nproc W``):

* img/s of plain training steps with 1 process, and with 2 under ``DistributedDataParallel``;
* the same 2-process steps under ``no_sync()`` (no gradient all-reduce): the difference is the
  communication a step pays;
* the time the profiler attributes to the all-reduce (``gloo:all_reduce`` events on rank 0);
* one all-reduce of the model's P parameters on its own, giving the effective bandwidth.

The model: a step takes ``compute(B / W) + allreduce(P)`` with a ring all-reduce sending
``2 (W - 1) / W * 4P`` bytes over the slowest link (the intra-node bandwidth on one node, the inter-node one
across nodes) plus ``2 (W - 1)`` latencies; with DDP's bucketing the all-reduce overlaps the backward pass,
so ``max(compute, allreduce)`` is the floor. It is checked against the 2-process measurement here; the GPU
rows take their compute time from ``docs/results/gpu_train_speed_fp32.json`` when gpu_check.sh has run, else
from ``--gpu-step-ms`` (an assumption, printed as one). This 2-vCPU machine behaves like one physical core:
its 2-process figure measures DDP's overhead, not a speed-up.

Usage: python benchmarks/ddp_scaling.py [--steps 40] [--batch 128] [--json docs/results/ddp_scaling.json]
       [--plot docs/ddp_scaling.png] [--replot]   (--replot: draw --plot from the --json file, measure nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from cnnlab.data.datasets import load_dataset
from cnnlab.data.tensors import epoch_order, shard
from cnnlab.models import create_model
from cnnlab.training.engine import available_cores

ROOT = Path(__file__).resolve().parents[1]


def _steps(net: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch: int,
           steps: int, sync: bool = True) -> float:
    """Seconds for ``steps`` optimiser steps (``sync`` False: DDP's ``no_sync``, no gradient all-reduce)."""
    start = time.perf_counter()
    for i in range(steps):
        idx = order[(i * batch) % (len(order) - batch):][:batch]
        ctx = net.no_sync() if not sync and isinstance(net, nn.parallel.DistributedDataParallel) else _null()
        with ctx:
            loss = F.cross_entropy(net(x[idx].float().div_(255)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
    return time.perf_counter() - start


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _allreduce_seconds(p: int, repeats: int = 20) -> float:
    t = torch.zeros(p)
    dist.all_reduce(t)
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(t)
    return (time.perf_counter() - start) / repeats


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads or max(1, available_cores() // world))  # default: what cnnlab sets per rank
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    train, _ = load_dataset("fashion-mnist-sample")
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, input_shape=(1, 28, 28))
    params = sum(p.numel() for p in model.parameters())
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    order = shard(epoch_order(len(train), 0, 0), rank, world)
    batch = args.batch // world
    _steps(net, opt, train.images, train.labels, order, batch, 5)  # warm-up
    res: dict = {"world": world, "params": params, "threads": torch.get_num_threads(), "per_rank_batch": batch}
    rounds = [_steps(net, opt, train.images, train.labels, order, batch, args.steps) for _ in range(args.repeats)]
    res["step_s"] = statistics.median(rounds) / args.steps
    if world > 1:
        rounds = [_steps(net, opt, train.images, train.labels, order, batch, args.steps, sync=False)
                  for _ in range(args.repeats)]
        res["step_no_sync_s"] = statistics.median(rounds) / args.steps
        res["allreduce_s"] = _allreduce_seconds(params)
        prof_steps = 10
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            _steps(net, opt, train.images, train.labels, order, batch, prof_steps)
        comm = [e for e in prof.key_averages() if "all_reduce" in e.key or "allreduce" in e.key]
        res["profiler_comm_s"] = sum(e.cpu_time_total for e in comm) / 1e6 / prof_steps
        res["profiler_events"] = sorted({e.key for e in comm})
    if rank == 0:
        torch.save(res, out)
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace, threads: int = 0) -> dict:
    out = f"/tmp/ddp_scaling_{os.getpid()}_{world}.pt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, args, out, threads), nprocs=world)
    res = torch.load(out)
    os.remove(out)
    res["img_s"] = args.batch / res["step_s"]
    return res


def _median(results: list[dict]) -> dict:
    """The first result with every timing replaced by the median over ``results`` (each round kept in ``rounds``)."""
    out = dict(results[0])
    for k in ("step_s", "step_no_sync_s", "allreduce_s", "profiler_comm_s", "img_s"):
        if k in out:
            out[k] = statistics.median(r[k] for r in results)
    out["rounds"] = [{k: r[k] for k in r if k.endswith("_s")} for r in results]
    return out


def ring_seconds(params: int, world: int, gbytes_s: float, latency_s: float) -> float:
    """Ring all-reduce of ``params`` float32 values among ``world`` ranks over a link of ``gbytes_s`` GB/s."""
    if world == 1:
        return 0.0
    return 2 * (world - 1) / world * 4 * params / (gbytes_s * 1e9) + 2 * (world - 1) * latency_s


def model_table(params: int, step_s: float, args: argparse.Namespace) -> list[dict]:
    """Per-step time for N GPUs per node x M nodes at a fixed per-GPU batch (weak scaling)."""
    rows = []
    for m in (1, 2, 4):
        for n in (1, 2, 4, 8):
            w = n * m
            bw = args.intra_gbs if m == 1 else args.inter_gbs
            comm = ring_seconds(params, w, bw, args.latency_us * 1e-6)
            rows.append({"gpus_per_node": n, "nodes": m, "world": w, "compute_ms": step_s * 1e3,
                         "allreduce_ms": comm * 1e3, "step_ms_no_overlap": (step_s + comm) * 1e3,
                         "step_ms_overlap": max(step_s, comm) * 1e3,
                         "efficiency_no_overlap": step_s / (step_s + comm)})
    return rows


def plot(result: dict, path: str) -> None:
    """Measured img/s here (left) and the model's efficiency for N GPUs x M nodes (right), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = [("1 proc\n2 threads", result["one_process"]), ("1 proc\n1 thread", result["one_process_1_thread"]),
            ("2 procs DDP\n1 thread each", result["two_processes"])]
    a.bar([r[0] for r in rows], [r[1]["img_s"] for r in rows], color=["#bbb", "#888", "#4a7"])
    a.set_ylabel("img/s")
    a.set_title(f"measured: {result['model']}, fp32, gloo, 2 vCPUs (overhead, not speed-up)", fontsize=9)
    g = result["gpu_model"]
    for m in (1, 2, 4):
        pts = [r for r in g["rows"] if r["nodes"] == m]
        b.plot([r["world"] for r in pts], [r["efficiency_no_overlap"] for r in pts], "o-", label=f"{m} node(s)")
    b.set_xscale("log", base=2)
    b.set_xlabel("GPUs in all")
    b.set_ylabel("compute / step time (no overlap)")
    b.set_ylim(0, 1.05)
    b.set_title(f"model: {result['params']:,} params, {g['compute_source']}", fontsize=9)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn_64x2")
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--steps", type=int, default=40, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=1, help="timed rounds per launch")
    ap.add_argument("--rounds", type=int, default=3, help="alternating launches of 1 and 2 processes (medians "
                    "reported, so that the other users of a shared machine slow both alike)")
    ap.add_argument("--intra-gbs", type=float, default=100.0, help="model: GB/s between GPUs of a node (assumed)")
    ap.add_argument("--inter-gbs", type=float, default=12.5, help="model: GB/s between nodes (100 Gb/s, assumed)")
    ap.add_argument("--latency-us", type=float, default=10.0, help="model: per-hop latency (assumed)")
    ap.add_argument("--gpu-step-ms", type=float, default=2.0, help="model: GPU compute per step when no "
                    "gpu_train_speed_fp32.json exists (assumed)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="draw the figures into this PNG")
    ap.add_argument("--replot", action="store_true", help="only draw --plot from the existing --json file")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(Path(args.json).read_text()), args.plot)
        return
    ones, singles, twos = [], [], []
    for r in range(args.rounds):
        ones.append(measure(1, args))
        singles.append(measure(1, args, threads=1))
        twos.append(measure(2, args))
        print(f"round {r + 1}: 1 process {ones[-1]['img_s']:,.0f} img/s ({ones[-1]['threads']} threads), "
              f"{singles[-1]['img_s']:,.0f} img/s (1 thread); 2 processes {twos[-1]['img_s']:,.0f} img/s", flush=True)
    one, single, two = _median(ones), _median(singles), _median(twos)
    p = one["params"]
    predicted = two["step_no_sync_s"] + two["allreduce_s"]
    print(f"{args.model}: {p:,} params, global batch {args.batch}, fp32, gloo, {platform.node()} "
          f"({available_cores()} cores)")
    print(f"1 process  ({one['threads']} threads, batch {one['per_rank_batch']}):  {one['img_s']:8,.0f} img/s  "
          f"{one['step_s'] * 1e3:6.1f} ms/step")
    print(f"1 process  (1 thread, batch {single['per_rank_batch']}):     {single['img_s']:8,.0f} img/s  "
          f"{single['step_s'] * 1e3:6.1f} ms/step")
    print(f"2 processes ({two['threads']} thread each, batch {two['per_rank_batch']} each): {two['img_s']:8,.0f} img/s  "
          f"{two['step_s'] * 1e3:6.1f} ms/step  = {two['img_s'] / one['img_s']:.2f}x / {two['img_s'] / single['img_s']:.2f}x")
    print(f"  without the all-reduce (no_sync): {two['step_no_sync_s'] * 1e3:6.1f} ms/step -> communication "
          f"{(two['step_s'] - two['step_no_sync_s']) * 1e3:.1f} ms/step")
    print(f"  profiler, all-reduce events on rank 0 (incl. waiting for the other rank): "
          f"{two['profiler_comm_s'] * 1e3:.1f} ms/step "
          f"({', '.join(two['profiler_events']) or 'none'})")
    print(f"  one all-reduce of {p:,} float32 alone: {two['allreduce_s'] * 1e3:.2f} ms "
          f"({4 * p / two['allreduce_s'] / 1e9:.2f} GB/s algorithm bandwidth)")
    print(f"  model (compute + all-reduce, no overlap): {predicted * 1e3:.1f} ms/step vs measured "
          f"{two['step_s'] * 1e3:.1f}")
    gpu_json = ROOT / "docs" / "results" / "gpu_train_speed_fp32.json"
    if gpu_json.is_file():
        g = json.loads(gpu_json.read_text())
        step_s, source = g["batch"] / g["cnnlab_img_s"], f"measured: {g.get('device_name', 'GPU')} fp32, {gpu_json.name}"
    else:
        step_s, source = args.gpu_step_ms / 1e3, f"assumed {args.gpu_step_ms} ms (no GPU run yet)"
    rows = model_table(p, step_s, args)
    print(f"\nModel, {p:,} params, GPU compute per step {step_s * 1e3:.2f} ms ({source}), "
          f"{args.intra_gbs} GB/s in a node, {args.inter_gbs} GB/s between nodes, {args.latency_us} us per hop:")
    print("GPUs/node nodes  all-reduce ms  step ms (no overlap / overlap)  efficiency")
    for r in rows:
        print(f"{r['gpus_per_node']:9d} {r['nodes']:5d}  {r['allreduce_ms']:13.3f}  {r['step_ms_no_overlap']:10.3f} / "
              f"{r['step_ms_overlap']:.3f}            {r['efficiency_no_overlap']:.2f}")
    if args.json:
        result = {"machine": platform.node(), "cores": available_cores(), "torch": torch.__version__,
                  "model": args.model, "params": p, "global_batch": args.batch, "steps": args.steps,
                  "repeats": args.repeats, "rounds": args.rounds, "one_process": one, "one_process_1_thread": single,
                  "two_processes": two,
                  "model_check_2proc_ms": {"predicted": predicted * 1e3, "measured": two["step_s"] * 1e3},
                  "gpu_model": {"compute_source": source, "intra_gbs": args.intra_gbs, "inter_gbs": args.inter_gbs,
                                "latency_us": args.latency_us, "rows": rows}}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        if args.plot:
            plot(result, args.plot)


if __name__ == "__main__":
    main()
