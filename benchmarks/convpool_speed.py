"""Speed of the native first-block kernel (``cnnlab.native``: Conv2D → 2x2 max-pool → ReLU): its AVX-512
loops against its portable loops, forward and backward, microseconds per image on one thread.

Both builds come from the same ``convpool.c``: the portable one is compiled with ``-DCONVPOOL_PORTABLE``
(the loops every machine runs, and all this kernel had before the AVX-512 ones), the other is the build
cnnlab uses (``-march=native``: the AVX-512 loops where the CPU has AVX-512 F/BW/VL). Rounds alternate the
builds in one process; medians are reported. Checks on the way that the two forwards agree bit for bit.

    .venv/bin/python benchmarks/convpool_speed.py [--batch 512] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cnnlab import native

# (label, channels, side, kernel, filters): the tutorials' first layers
SHAPES = [("tutorial CNN, Fashion-MNIST 1->64 3x3", 1, 28, 3, 64),
          ("MNIST 1->32 3x3", 1, 28, 3, 32),
          ("MNIST 1->64 5x5", 1, 28, 5, 64),
          ("CIFAR-10 3->32 3x3", 3, 32, 3, 32)]


def buffers(x: torch.Tensor, f: int, k: int, bf16: bool) -> dict[str, torch.Tensor]:
    """Output, code and gradient buffers for one build, made once and reused: a fresh 20 MB output per call
    would time the kernel's page faults (the trainer keeps its heap, see ``cnnlab.native.heap``)."""
    n, _, h, _ = x.shape
    h2 = (h - k + 1) // 2
    return {"out": torch.zeros(n, h2, h2, f, dtype=torch.bfloat16 if bf16 else torch.float32),
            "code": torch.zeros(n, h2, h2, f, dtype=torch.uint8), "gw": torch.zeros(x.shape[1] * k * k, f),
            "gb": torch.zeros(f)}


def time_pair(lib, x, wt, b, k: int, g: torch.Tensor, buf: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(forward µs/image, backward µs/image) of one call each over the whole batch, into ``buf``."""
    n, c, h, w = x.shape
    f = wt.shape[1]
    bf16 = int(buf["out"].dtype == torch.bfloat16)
    start = time.perf_counter()
    lib.convpool_forward(x.data_ptr(), wt.data_ptr(), b.data_ptr(), buf["out"].data_ptr(), bf16,
                         buf["code"].data_ptr(), 0, n, c, h, w, k, k, f)
    mid = time.perf_counter()
    lib.convpool_backward(x.data_ptr(), g.data_ptr(), bf16, buf["code"].data_ptr(), buf["gw"].data_ptr(),
                          buf["gb"].data_ptr(), 0, n, c, h, w, k, k, f)
    end = time.perf_counter()
    return (mid - start) / n * 1e6, (end - mid) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    fast = native.library()
    if fast is None:
        raise SystemExit(f"no native kernel here: {native._failed}")
    builds = {"portable": native._build(("-DCONVPOOL_PORTABLE",)), "native": fast}
    rows = []
    for label, c, side, k, f in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(args.batch, c, side, side)
        wt, b = torch.randn(c * k * k, f), torch.randn(f)
        h2 = (side - k + 1) // 2
        g = torch.randn(args.batch, h2, h2, f)
        for bf16 in (False, True):
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
            bufs = {name: buffers(x, f, k, bf16) for name in builds}
            gt = g.to(bufs["native"]["out"].dtype)
            for r in range(args.rounds + 1):  # round 0 warms up
                for name, lib in builds.items():
                    fwd, bwd = time_pair(lib, x, wt, b, k, gt, bufs[name])
                    if r:
                        times[name].append((fwd, bwd))
            assert torch.equal(bufs["portable"]["out"], bufs["native"]["out"]), "forwards differ"
            med = {name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
                   for name, v in times.items()}
            row = {"shape": label, "out": "bf16" if bf16 else "fp32", "batch": args.batch,
                   "portable_fwd_us": med["portable"][0], "portable_bwd_us": med["portable"][1],
                   "native_fwd_us": med["native"][0], "native_bwd_us": med["native"][1]}
            rows.append(row)
            print(f"{label:<40} {row['out']}: forward {row['portable_fwd_us']:6.1f} -> {row['native_fwd_us']:5.1f} "
                  f"µs/img ({row['portable_fwd_us'] / row['native_fwd_us']:.2f}x), backward "
                  f"{row['portable_bwd_us']:6.1f} -> {row['native_bwd_us']:5.1f} µs/img "
                  f"({row['portable_bwd_us'] / row['native_bwd_us']:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": 1, "rounds": args.rounds, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
