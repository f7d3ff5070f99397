"""Commands that look at a trained run: evaluate, show, report, augment-preview."""

from __future__ import annotations

import argparse

from cnnlab.app.report import build_report
from cnnlab.cli.main import EXIT_OK, print_json, set_overrides
from cnnlab.errors import CnnlabError
from cnnlab.runs.loaded import evaluate_run
from cnnlab.runs.options import experiment_config
from cnnlab.training.metrics import format_accuracy, format_confusion
from cnnlab.views import ShowOptions, augment_preview, show


def _indices(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CnnlabError(f"--images {text!r}: expected comma-separated test-set indices like 0,7,26") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    _, ev, test = evaluate_run(args.run_dir, data_dir=args.data_dir)
    if args.json:
        d = ev.to_dict()
        print_json({k: d[k] for k in ("test_loss", "test_acc", "per_class", "confusion")})
        return EXIT_OK
    print(f"Test set: {test.name} ({len(test):,} images)")
    print(f"Test loss: {ev.loss:.4f}   Test accuracy: {ev.acc:.4f}")
    print("\nPer-class accuracy:")
    for c, a in ev.per_class.items():
        print(f"  {c:<14} {format_accuracy(a)}")
    print("\nConfusion matrix (rows: true class, columns: predicted):")
    print(format_confusion(ev))
    pairs = ev.most_confused(5)
    if pairs:
        print("\nMost confused: " + "; ".join(f"{t} → {p} ({n})" for t, p, n in pairs))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    opts = ShowOptions(images=_indices(args.images), layers=tuple(args.layers) if args.layers else None,
                       filter=args.filter, n=args.n, seed=args.seed)
    for path in show(args.run_dir, args.what, opts, out=args.out, data_dir=args.data_dir):
        print(path)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    path = build_report(args.run_dir, out=args.out, data_dir=args.data_dir, maximize=args.maximize)
    print(f"Report: {path}")
    print(f"Open: {path.resolve().as_uri()}")
    return EXIT_OK


def cmd_augment_preview(args: argparse.Namespace) -> int:
    cfg = experiment_config(args.config, overrides=set_overrides(args), data_dir=args.data_dir)
    print(augment_preview(cfg, args.out, n=args.n, copies=args.copies, seed=args.seed))
    return EXIT_OK
