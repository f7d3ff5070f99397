"""One small function per CLI command: typed arguments in, one library call, the result printed.

Library imports sit inside the functions so that ``cnnlab --help`` and ``cnnlab models`` never pay for
PyTorch's import when they do not need it.
"""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.config import parse_override
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import BY_NAME

RESUME_APPLIES = ("epochs", "stop_at", "data_dir")  # what --resume can change; the other options are refused


def _print_json(data) -> None:
    print(json.dumps(data, indent=1))


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.no_progress else None


def training_options(args: argparse.Namespace) -> dict:
    """The training options (``runs.options.OPTIONS``) the user gave, typed as argparse parsed them."""
    return {name: getattr(args, name) for name in BY_NAME if getattr(args, name, None) not in (None, False, [])}


def _overrides(args: argparse.Namespace) -> list:
    return [parse_override(item) for item in args.overrides]


def _finish(result, what_next: bool = True) -> int:
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
    from cnnlab.runs.experiment import train
    from cnnlab.runs.options import experiment_config

    options = training_options(args)
    if args.resume:
        from cnnlab.runs.run_dir import RunDir

        refused = [BY_NAME[n].flag for n in options if n not in RESUME_APPLIES]
        refused += [f for f, v in (("--config", args.config), ("--recipe", args.recipe), ("--out", args.out),
                                   ("--overwrite", args.overwrite)) if v]
        if refused:
            raise CnnlabError(f"--resume continues a run with its own config, so {', '.join(refused)} cannot apply; "
                              f"drop {'it' if len(refused) == 1 else 'them'} (--epochs N extends the run, --set "
                              "KEY=VALUE changes a setting)")
        cfg = experiment_config(RunDir.open(args.resume).file("config.yaml"), overrides=_overrides(args), **options)
        return _finish(train(cfg, resume=args.resume, progress=_progress(args)))
    cfg = experiment_config(args.config, recipe=args.recipe, overrides=_overrides(args), **options)
    return _finish(train(cfg, out=args.out, overwrite=args.overwrite, progress=_progress(args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnnlab.app.report import build_report
    from cnnlab.data.datasets import locate
    from cnnlab.runs.experiment import train
    from cnnlab.runs.options import experiment_config

    cfg = experiment_config("fashion_mnist_cnn", data_dir=args.data_dir)
    try:
        locate(cfg.data.dataset, cfg.data.data_dir)
    except CnnlabError as exc:
        print(f"note: {exc}")
        print("note: training on the bundled real sample fashion-mnist-sample (6,000 train / 1,000 test images) instead")
        cfg = experiment_config(cfg, dataset="fashion-mnist-sample")
    out = Path(args.out)
    overwrite = out.exists() and (out / "run.json").is_file()
    result = train(cfg, out=out, overwrite=overwrite, progress=_progress(args))
    if result.failed:
        return _finish(result)
    print("Drawing the pictures (report, feature maps, filters, occlusion, Grad-CAM, maximisation, ...)")
    report = build_report(out, data_dir=args.data_dir, maximize=True, figures_dir=out / "figures",
                          extra_views=("kernels", "saliency"))  # the two views the page leaves out
    _finish(result, what_next=False)
    print(f"Open: {report.resolve().as_uri()} (everything on one page), figures in {out / 'figures'}")
    print(f"Next: cnnlab show {out} feature-maps --layers conv2d_1   cnnlab predict {out} IMAGE.png")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.runs.loaded import evaluate_run
    from cnnlab.training.metrics import format_confusion

    _, ev, test = evaluate_run(args.run_dir, data_dir=args.data_dir)
    if args.json:
        d = ev.to_dict()
        _print_json({k: d[k] for k in ("test_loss", "test_acc", "per_class", "confusion")})
        return 0
    print(f"Test set: {test.name} ({len(test):,} images)")
    print(f"Test loss: {ev.loss:.4f}   Test accuracy: {ev.acc:.4f}")
    print("\nPer-class accuracy:")
    for c, a in ev.per_class.items():
        print(f"  {c:<14} {a:.4f}")
    print("\nConfusion matrix (rows: true class, columns: predicted):")
    print(format_confusion(ev))
    pairs = ev.most_confused(5)
    if pairs:
        print("\nMost confused: " + "; ".join(f"{t} → {p} ({n})" for t, p, n in pairs))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cnnlab.serve.onnx import ParityError
    from cnnlab.serve.predict import GRID_MAX, predict_files, write_csv, write_grid

    try:
        results = predict_files(args.run_dir, args.files, top_k=args.top_k, engine=args.engine,
                                keep_images=GRID_MAX if args.grid else 0)
    except ParityError as exc:  # the automatic export of --engine onnx failed its check: a failure, not a mistake
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"error: {r.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps({"file": str(r.path), "top": [{"label": lab, "prob": round(p, 6)} for lab, p in r.top]}))
        elif not args.out:
            print(f"{r.path}: " + ", ".join(f"{lab} {p:.3f}" for lab, p in r.top))
    if args.out:
        path = write_csv(results, args.out, args.top_k)
        if not args.json:
            print(f"Predicted {len(results) - failed} of {len(results)} images: {path}")
    if args.grid and len(results) > failed:
        print(f"Grid: {write_grid(results, args.grid)}", file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from cnnlab.serve.onnx import ParityError, export

    try:
        result = export(args.run_dir, args.format, out=args.out, opset=args.opset, batch=args.batch,
                        data_dir=args.data_dir)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Exported: {result.path} (opset {result.opset}, batch {result.batch})")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import CIFAR_ARCHIVE, DATASETS, where_is

    if args.action == "inspect":
        from cnnlab.data.folder import inspect_folder

        found = inspect_folder(args.path, labels=args.labels, pattern=args.pattern, csv=args.csv)
        if args.json:
            _print_json(found.to_dict())
        else:
            print("\n".join(found.to_lines()))
        return 0
    if args.action == "list":
        for name in DATASETS.names():
            print(f"{name:<22} {DATASETS.get(name).description}")
        print("folder:PATH            your own images (class subfolders, cat.123.jpg names, or a CSV)")
        return 0
    info = DATASETS.get(args.name)
    c, h, w = info.shape
    print(f"{info.name}: {info.description}")
    print(f"  images: {h}x{w}x{c} uint8, {info.sizes[0]:,} train / {info.sizes[1]:,} test")
    print(f"  classes ({len(info.classes)}): {', '.join(info.classes)}")
    if info.homepage:
        print(f"  homepage: {info.homepage}")
    print(f"  location: {where_is(info.name, args.data_dir)}")
    print("  files:")
    for f in info.files:
        check = f"sha256 {f.sha256}" if f.sha256 else f"md5 {f.md5}"
        print(f"    {f.name}  {f.size:,} bytes  {check}" if f.size else f"    {f.name}  {check}")
        for url in f.urls[:1]:
            print(f"      from {url}")
    if info.layout == "cifar":
        print(f"    (downloaded as {CIFAR_ARCHIVE.name}, md5 {CIFAR_ARCHIVE.md5}, from {CIFAR_ARCHIVE.urls[0]})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab.models import describe, model_names

    for name in model_names():
        print(f"{name:<20} {describe(name)}")
    print("\nAny Keras-style layer list works too: model.layers in a YAML config (see configs/).")
    return 0


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"28,28,1"`` (Keras's H,W,C order) → (C, H, W)."""
    try:
        h, w, c = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise CnnlabError(f"--input-shape {text!r}: expected H,W,C like 28,28,1 or 224,224,3") from None
    if min(h, w, c) < 1:
        raise CnnlabError(f"--input-shape {text!r}: sizes must be positive")
    return c, h, w


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab.app.api import summary

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    print(summary(args.model, input_shape=shape, num_classes=args.num_classes))
    return 0


def _indices(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CnnlabError(f"--images {text!r}: expected comma-separated test-set indices like 0,7,26") from None


def cmd_show(args: argparse.Namespace) -> int:
    from cnnlab.views import ShowOptions, show

    opts = ShowOptions(images=_indices(args.images), layers=tuple(args.layers) if args.layers else None,
                       filter=args.filter, n=args.n, seed=args.seed)
    for path in show(args.run_dir, args.what, opts, out=args.out, data_dir=args.data_dir):
        print(path)
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from cnnlab.runs.options import experiment_config
    from cnnlab.views import augment_preview

    cfg = experiment_config(args.config, overrides=_overrides(args), data_dir=args.data_dir)
    print(augment_preview(cfg, args.out, n=args.n, copies=args.copies, seed=args.seed))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.app.report import build_report

    path = build_report(args.run_dir, out=args.out, data_dir=args.data_dir, maximize=args.maximize)
    print(f"Report: {path}")
    print(f"Open: {path.resolve().as_uri()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.app.compare import plan, run_compare
    from cnnlab.runs.options import option_overrides

    overrides = [*option_overrides(training_options(args)), *_overrides(args)]
    variants, out = plan(args.config, vary=args.vary, configs=args.configs, overrides=overrides, out=args.out)
    result = run_compare(variants, out, overwrite=args.overwrite, progress=_progress(args))
    print()
    print(result.markdown)
    print(f"\nCompared in: {out} (compare.md, compare.csv, compare.png)")
    return 1 if result.failed else 0
