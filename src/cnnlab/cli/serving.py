"""Commands that serve a trained run: predict, export."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.cli.main import EXIT_FAILED, EXIT_OK, translate
from cnnlab.serve.onnx import ParityError, export
from cnnlab.serve.predict import GRID_MAX, predict_files, write_csv, write_grid


def printable(path) -> str:
    """A file name on one line: control characters (a newline in a name) shown escaped, as ``ls -b`` does."""
    text = str(path)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        results = predict_files(args.run_dir, args.files, top_k=args.top_k, engine=args.engine,
                                keep_images=GRID_MAX if args.grid else 0)
    except ParityError as exc:  # the automatic export of --engine onnx failed its check: a failure, not a mistake
        print(f"error: {translate(str(exc), args)}", file=sys.stderr)
        return EXIT_FAILED
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            # a per-file error is a library message like any other: its `key`s read as flags or bare names
            print(f"error: {printable(translate(r.error, args))}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"file": str(r.path), "top": [{"label": lab, "prob": round(p, 6)} for lab, p in r.top]}))
        elif not args.out:
            print(f"{printable(r.path)}: " + ", ".join(f"{lab} {p:.3f}" for lab, p in r.top))
    if args.out:
        path = write_csv(results, args.out, args.top_k)
        if not args.json:
            print(f"Predicted {len(results) - failed} of {len(results)} images: {path}")
    if args.grid and len(results) > failed:
        print(f"Grid: {write_grid(results, args.grid)}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    try:
        result = export(args.run_dir, args.format, out=args.out, opset=args.opset, batch=args.batch,
                        data_dir=args.data_dir, quantize=args.quantize, max_drop=args.max_drop)
    except ParityError as exc:
        print(f"error: {translate(str(exc), args)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Exported: {result.path} (opset {result.opset}, batch {result.batch})")
    if result.int8:
        print(f"Exported: {result.int8.path} (int8, QDQ)")
    return EXIT_OK
