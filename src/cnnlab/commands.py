"""One function per CLI command: turn parsed arguments into a config, call the library, print the result."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnlab.config import Config, load_config
from cnnlab.errors import CnnlabError


def _print_json(data) -> None:
    print(json.dumps(data, indent=1))


def train_config(args: argparse.Namespace) -> Config:
    """The config a ``train`` invocation asks for: YAML (or defaults) + quick-path flags + ``--set``."""
    overrides = []
    if args.model:
        overrides += [f"model.name={args.model}", "model.layers=null"]
    for flag, key in (("dataset", "data.dataset"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
                      ("lr", "train.lr"), ("precision", "train.precision"), ("data_dir", "data.data_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.stop_at:
        overrides.append("callbacks.stop_at=[" + ", ".join(args.stop_at) + "]")
    if args.pretrained:
        overrides.append("model.pretrained=true")
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.freeze:
        overrides.append(f"model.freeze={args.freeze}")
    if args.fine_tune:
        overrides += ["model.freeze=backbone", "model.freeze_epochs=1", "model.backbone_lr=0.1"]
    from cnnlab.api import config_path, recipe_path

    if args.recipe:
        if args.config:
            raise CnnlabError("--recipe picks the config itself (configs/RECIPE/DATASET.yaml); drop --config")
        base = recipe_path(args.recipe, args.dataset or "fashion-mnist")
    else:
        base = config_path(args.config) if args.config else None
    return load_config(base, [*overrides, *args.overrides])


def _finish(result, what_next: bool = True) -> int:
    run = result.run
    if result.failed:
        print(f"Run: {run.path} (failed; the last good checkpoint is in {run.checkpoints / 'last'})")
        return 1
    print(f"Test accuracy: {result.test.acc:.4f} (loss {result.test.loss:.4f})")
    print(f"Run: {run.path}")
    if what_next:
        print(f"Open: {run.file('summary.txt')} (model and per-class accuracy), {run.file('history.csv')} (per epoch)")
        print(f"Next: cnnlab evaluate {run.path}   cnnlab predict {run.path} IMAGE.png")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cnnlab import api

    if args.resume:
        from cnnlab.runs import Run

        cfg = load_config(Run.open(args.resume).file("config.yaml"), args.overrides)
        if args.config or args.model or args.dataset:
            raise CnnlabError("--resume continues a run with its own config; drop --config/--model/--dataset "
                              "(only --set train.epochs=N to extend it)")
        if args.epochs:
            cfg = load_config(Run.open(args.resume).file("config.yaml"), [*args.overrides, f"train.epochs={args.epochs}"])
        return _finish(api.train(cfg, resume=args.resume, progress=False if args.no_progress else None))
    cfg = train_config(args)
    return _finish(api.train(cfg, out=args.out, overwrite=args.overwrite, progress=False if args.no_progress else None))


def demo_config(data_dir: str | None = None) -> Config:
    """The main job: the packaged configs/fashion_mnist_cnn.yaml (found from any folder)."""
    from cnnlab.api import config_path

    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    return load_config(config_path("fashion_mnist_cnn"), overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.data.datasets import locate

    cfg = demo_config(args.data_dir)
    try:
        locate(cfg.data.dataset, cfg.data.data_dir)
    except CnnlabError as exc:
        print(f"note: {exc}")
        print("note: training on the bundled real sample fashion-mnist-sample (6,000 train / 1,000 test images) instead")
        cfg = load_config(None, ["data.dataset=fashion-mnist-sample"], base=_as_dict(cfg))
    out = Path(args.out)
    overwrite = out.exists() and (out / "run.json").is_file()
    result = api.train(cfg, out=out, overwrite=overwrite, progress=False if args.no_progress else None)
    if result.failed:
        return _finish(result)
    from cnnlab.report import build_report

    print("Drawing the pictures (report, feature maps, filters, occlusion, Grad-CAM, maximisation, ...)")
    report = build_report(out, data_dir=args.data_dir, maximize=True, figures_dir=out / "figures",
                          extra_views=("kernels", "saliency"))  # the two views the page leaves out
    _finish(result, what_next=False)
    print(f"Open: {report.resolve().as_uri()} (everything on one page), figures in {out / 'figures'}")
    print(f"Next: cnnlab show {out} feature-maps --layers conv2d_1   cnnlab predict {out} IMAGE.png")
    return 0


def _as_dict(cfg: Config) -> dict:
    from cnnlab.config import to_dict

    return to_dict(cfg)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cnnlab import api
    from cnnlab.train.metrics import format_confusion

    _, ev, test = api.evaluate_run(args.run_dir, data_dir=args.data_dir)
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
    from cnnlab.export import ParityError
    from cnnlab.predict import GRID_MAX, predict_files, write_csv, write_grid

    if args.top_k < 1:
        raise CnnlabError("--top-k must be ≥ 1")
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
    from cnnlab.export import ParityError, export

    try:
        result = export(args.run_dir, args.format, out=args.out, opset=args.opset, batch=args.batch,
                        data_dir=args.data_dir)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Exported: {result.path} (opset {result.opset}, batch {result.batch})")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cnnlab.data.datasets import DATASETS, where_is

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
            info = DATASETS.get(name)
            print(f"{name:<22} {info.description}")
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
        from cnnlab.data.datasets import CIFAR_ARCHIVE

        print(f"    (downloaded as {CIFAR_ARCHIVE.name}, md5 {CIFAR_ARCHIVE.md5}, from {CIFAR_ARCHIVE.urls[0]})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cnnlab.models import describe, model_names

    for name in model_names():
        print(f"{name:<20} {describe(name)}")
    print("\nAny Keras-style layer list works too: model.layers in a YAML config (see configs/).")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cnnlab.api import model_for_summary
    from cnnlab.inspect.summary import summary_text

    model, shape, title = model_for_summary(args.model, args.input_shape, args.num_classes)
    print(summary_text(model, shape, title=title))
    return 0


def _indices(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CnnlabError(f"--images {text!r}: expected comma-separated test-set indices like 0,7,26") from None


def cmd_show(args: argparse.Namespace) -> int:
    from cnnlab.inspect.views import ShowOptions, show

    if args.n < 1:
        raise CnnlabError("-n must be ≥ 1")
    opts = ShowOptions(images=_indices(args.images), layers=tuple(args.layers) if args.layers else None,
                       filter=args.filter, n=args.n, seed=args.seed)
    for path in show(args.run_dir, args.what, opts, out=args.out, data_dir=args.data_dir):
        print(path)
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from cnnlab.api import augment_preview

    overrides = [*args.overrides, *([f"data.data_dir={args.data_dir}"] if args.data_dir else [])]
    print(augment_preview(load_config(args.config, overrides), args.out, n=args.n, copies=args.copies, seed=args.seed))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cnnlab.report import build_report

    path = build_report(args.run_dir, out=args.out, data_dir=args.data_dir, maximize=args.maximize)
    print(f"Report: {path}")
    print(f"Open: {path.resolve().as_uri()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cnnlab.compare import common_overrides, plan, run_compare

    overrides = common_overrides(args.overrides, epochs=args.epochs, data_dir=args.data_dir)
    variants, out = plan(args.config, vary=args.vary, configs=args.configs, overrides=overrides, out=args.out)
    result = run_compare(variants, out, overwrite=args.overwrite, progress=False if args.no_progress else None)
    print()
    print(result.markdown)
    print(f"\nCompared in: {out} (compare.md, compare.csv, compare.png)")
    return 1 if result.failed else 0
