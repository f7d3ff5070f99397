"""Commands that meet other tools: import-keras, export-metrics."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cnnlab.cli.main import EXIT_OK
from cnnlab.io import shell_word
from cnnlab.runs.imported import import_keras
from cnnlab.runs.metrics_export import export_metrics


def cmd_import_keras(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    result = import_keras(args.model_file, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
                          classes=classes, overwrite=args.overwrite)
    run, word = result.run, shell_word(result.run.path)
    print(f"Run: {run.path}")
    if result.test is None:
        print(f"Next: cnnlab predict {word} IMAGE.png   cnnlab export {word}   (import again with --dataset "
              "to evaluate, show and report)")
    else:
        print(f"Next: cnnlab evaluate {word}   cnnlab show {word} feature-maps   cnnlab report {word}")
    return EXIT_OK


def cmd_export_metrics(args: argparse.Namespace) -> int:
    for path in export_metrics(args.run_dirs, args.format, out=args.out, overwrite=args.overwrite):
        print(path)
    if args.format == "tensorboard":
        parents = [str(Path(r).resolve().parent) for r in args.run_dirs]
        print(f"Open: tensorboard --logdir {shell_word(args.out or os.path.commonpath(parents))}")
    return EXIT_OK
