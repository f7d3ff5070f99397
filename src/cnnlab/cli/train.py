"""``cnnlab train``: a new run, or one resumed from its last checkpoint."""

from __future__ import annotations

import argparse

from cnnlab.cli.main import set_overrides, training_options
from cnnlab.errors import CnnlabError
from cnnlab.runs.experiment import train
from cnnlab.runs.options import BY_NAME, experiment_config
from cnnlab.runs.run_dir import RunDir

RESUME_APPLIES = ("epochs", "stop_at", "data_dir")  # what --resume can change; the other options are refused


def progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def finish(result, what_next: bool = True) -> int:
    run = result.run
    if result.failed:
        last = run.checkpoints / "last"
        kept = f"the last good checkpoint is in {last}" if last.exists() else "no epoch finished, so nothing was kept"
        print(f"Run: {run.path} (failed; {kept})")
        return 1
    print(f"Test accuracy: {result.test.acc:.4f} (loss {result.test.loss:.4f})")
    print(f"Run: {run.path}")
    if what_next:
        print(f"Open: {run.file('summary.txt')} (model and per-class accuracy), {run.file('history.csv')} (per epoch)")
        print(f"Next: cnnlab evaluate {run.path}   cnnlab predict {run.path} IMAGE.png")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    options = training_options(args)
    if args.resume:
        refused = [BY_NAME[n].flag for n in options if n not in RESUME_APPLIES]
        refused += [f for f, v in (("--config", args.config), ("--recipe", args.recipe), ("--out", args.out),
                                   ("--overwrite", args.overwrite)) if v]
        if refused:
            raise CnnlabError(f"--resume continues a run with its own config, so {', '.join(refused)} cannot apply; "
                              f"drop {'it' if len(refused) == 1 else 'them'} (--epochs N extends the run, --set "
                              "KEY=VALUE changes a setting)")
        cfg = experiment_config(RunDir.open(args.resume).file("config.yaml"), overrides=set_overrides(args), **options)
        return finish(train(cfg, resume=args.resume, progress=progress(args)))
    cfg = experiment_config(args.config, recipe=args.recipe, overrides=set_overrides(args), **options)
    return finish(train(cfg, out=args.out, overwrite=args.overwrite, progress=progress(args)))
