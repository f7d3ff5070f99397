"""Commands that meet other tools: import-keras, export-metrics."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cnnlab.cli.main import EXIT_OK
from cnnlab.runs.imported import import_keras
from cnnlab.runs.metrics_export import export_metrics


def cmd_import_keras(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    result = import_keras(args.model_file, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
                          classes=classes, overwrite=args.overwrite)
    run = result.run
    print(f"Run: {run.path}")
    if result.test is None:
        print(f"Next: cnnlab predict {run.path} IMAGE.png   cnnlab export {run.path}   (import again with --dataset "
              "to evaluate, show and report)")
    else:
        print(f"Next: cnnlab evaluate {run.path}   cnnlab show {run.path} feature-maps   cnnlab report {run.path}")
    return EXIT_OK


def cmd_export_metrics(args: argparse.Namespace) -> int:
    for path in export_metrics(args.run_dirs, args.format, out=args.out, overwrite=args.overwrite):
        print(path)
    if args.format == "tensorboard":
        parents = [str(Path(r).resolve().parent) for r in args.run_dirs]
        print(f"Open: tensorboard --logdir {args.out or os.path.commonpath(parents)}")
    return EXIT_OK
