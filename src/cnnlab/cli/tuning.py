"""``cnnlab lr-find``: the learning-rate range test of a config, printed and drawn."""

from __future__ import annotations

import argparse

from cnnlab.app.api import lr_find
from cnnlab.cli.main import EXIT_OK, set_overrides, training_options

ROWS = 12  # points of the curve printed (the PNG has them all)


def cmd_lr_find(args: argparse.Namespace) -> int:
    found, path = lr_find(args.config, recipe=args.recipe, overrides=dict(set_overrides(args)), out=args.out,
                          start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, **training_options(args))
    n = len(found.lrs)
    picks = {round(i * (n - 1) / (ROWS - 1)) for i in range(ROWS)} if n > ROWS else set(range(n))
    if found.suggestion is not None:
        picks.add(found.lrs.index(found.suggestion))
    print(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    for i in sorted(picks):
        mark = "  <- suggested" if found.suggestion is not None and found.lrs[i] == found.suggestion else ""
        print(f"{found.lrs[i]:>10.2e}  {found.losses[i]:>8.4f}  {found.smoothed[i]:>8.4f}{mark}")
    print(found.summary()[0].upper() + found.summary()[1:])
    if found.suggestion is not None:
        print(f"Train with it: --lr {found.suggestion:.2g} (or --set train.lr={found.suggestion:.2g})")
    if path is not None:
        print(f"Plot: {path}")
    return EXIT_OK
