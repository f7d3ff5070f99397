"""``cnnlab train``: a new run, or one resumed from its last checkpoint."""

from __future__ import annotations

import argparse
import sys

from cnnlab.cli.main import EXIT_FAILED, EXIT_OK, set_overrides, training_options
from cnnlab.io import shell_word
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config, resume_config
from cnnlab.runs.run_dir import RunDir


def command_line() -> str:
    """The command as typed, for run.json."""
    return " ".join(["cnnlab", *sys.argv[1:]])


def progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def finish(result, what_next: bool = True) -> int:
    run = result.run
    if not result.lead:  # another rank of a torchrun job: rank 0 prints
        return 1 if result.failed else 0
    if result.failed:
        last = run.checkpoints / "last"
        kept = f"the last good checkpoint is in {last}" if last.exists() else "no epoch finished, so nothing was kept"
        print(f"Run: {run.path} (failed; {kept})")
        return EXIT_FAILED
    print(f"Test accuracy: {result.test.acc:.4f} (loss {result.test.loss:.4f})")
    print(f"Run: {run.path}")
    if what_next:
        print(f"Open: {run.file('summary.txt')} (model and per-class accuracy), {run.file('history.csv')} (per epoch)")
        print(f"Next: cnnlab evaluate {shell_word(run.path)}   cnnlab predict {shell_word(run.path)} IMAGE.png")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    options = training_options(args)
    if args.resume:
        refused = [name for name in ("config", "recipe", "out", "overwrite") if getattr(args, name)]
        cfg = resume_config(RunDir.open(args.resume).path, overrides=set_overrides(args), refused=refused, **options)
        return finish(train(cfg, resume=args.resume, progress=progress(args), command=command_line()))
    cfg = experiment_config(args.config, recipe=args.recipe, overrides=set_overrides(args), **options)
    return finish(train(cfg, out=args.out, overwrite=args.overwrite, progress=progress(args), command=command_line()))
