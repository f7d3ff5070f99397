"""The ``cnnlab`` command: argument parsing → config → one library call. No logic lives here."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import sys
from collections.abc import Sequence

from cnnlab._version import __version__
from cnnlab.config import Override, parse_override
from cnnlab.errors import CnnlabError
from cnnlab.runs.options import BY_NAME, OPTIONS

EPILOG = """examples:
  cnnlab demo                                          train the first tutorial's CNN on Fashion-MNIST
  cnnlab train --config configs/fashion_mnist_cnn.yaml --set train.epochs=10
  cnnlab train --model cnn_64x2 --dataset mnist --epochs 3 --stop-at val_acc=0.99
  cnnlab train --resume runs/fashion_mnist_cnn         continue a stopped run
  cnnlab evaluate runs/fashion_mnist_cnn --json
  cnnlab predict runs/fashion_mnist_cnn shoe.png --top-k 3
  cnnlab show runs/fashion_mnist_cnn feature-maps       pictures: curves, mistakes, occlusion, maximize, ...
  cnnlab report runs/fashion_mnist_cnn                  everything on one HTML page
  cnnlab compare configs/exercises/filters.yaml         an exercise's variants side by side
  cnnlab train --recipe fast --dataset mnist            a speed recipe (configs/fast/)
  cnnlab predict runs/fashion_mnist_cnn photos/ --out preds.csv --grid preds.png --engine onnx
  cnnlab export runs/fashion_mnist_cnn --format onnx   model.onnx, checked against PyTorch on test images
  cnnlab summary cnn_64x2                               Keras-style table of a model
  cnnlab import-keras model.h5 --out runs/keras --dataset fashion-mnist   a Keras model as a cnnlab run
  cnnlab train --config fashion_mnist_cnn --log tensorboard --log mlflow   log to TensorBoard / MLflow too
  cnnlab export-metrics runs/* --format tensorboard   older runs' metrics as TensorBoard event files
  cnnlab lr-find configs/cifar10_basic.yaml           learning-rate range test: loss vs lr, suggested rate
  cnnlab dashboard runs --open                          a local web page: live curves, compare, explorer
data: --data-dir, then $CNNLAB_DATA, then ~/.cache/cnnlab, then a verified download."""


COMPARE_EPILOG = """examples:
  cnnlab compare configs/exercises/filters.yaml            the variants listed in the file's compare: section
  cnnlab compare configs/fashion_mnist_cnn32.yaml --vary model.layers.0.filters=16,32,64 --epochs 2
  cnnlab compare configs/fashion_mnist_cnn32.yaml --vary train.lr=0.001,0.003 --vary train.batch_size=32,128
  cnnlab compare --configs configs/fashion_mnist_dnn.yaml configs/fashion_mnist_cnn32.yaml
writes DIR/<variant>/ (normal run directories), DIR/compare.md, compare.csv, compare.png, compare.json;
exit status 1 when a variant failed (its error is in the table)."""

# The exit statuses of every command: the table "Exit codes" in README.md lists these, and a test holds the two
# together. Commands return these names, never bare numbers.
EXIT_OK, EXIT_FAILED, EXIT_MISTAKE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "the command ran, but part of its work failed, and it says which",
    EXIT_MISTAKE: "a mistake in the command, config or data: one error line naming it and the fix; nothing written",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "stopped by SIGTERM (a SLURM or Kubernetes pre-emption)",
}

RUN_DATA_HELP = ("where the run's data is now, if it moved: a folder holding <dataset>/<official files>, or "
                 "for a folder dataset the image folder itself")

# Which module of cnnlab.cli runs each subcommand (grouped by the library they need).
COMMANDS = {"train": "train", "demo": "experiments", "compare": "experiments", "evaluate": "inspecting", "show": "inspecting",
            "report": "inspecting", "augment-preview": "inspecting", "predict": "serving", "export": "serving",
            "datasets": "catalog", "models": "catalog", "summary": "catalog", "import-keras": "interop",
            "export-metrics": "interop", "lr-find": "tuning", "dashboard": "dashboard"}


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The training flags every subcommand that trains takes, from the one definition in ``runs.options``."""
    for opt in OPTIONS:
        if opt.kind == "flag":
            p.add_argument(opt.flag, dest=opt.name, action="store_true", default=None, help=opt.help)
        elif opt.kind == "list":
            p.add_argument(opt.flag, dest=opt.name, action="append", default=None, metavar=opt.metavar, help=opt.help,
                           choices=opt.choices)
        else:
            p.add_argument(opt.flag, dest=opt.name, type={"int": int, "float": float, "str": str}[opt.kind],
                           choices=opt.choices, metavar=opt.metavar, help=opt.help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.epochs=10 or model.layers.0.filters=32 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="plain epoch lines, no live bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cnnlab", description="Train, evaluate, compare and see inside CNN image classifiers.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="train the first tutorial's CNN on Fashion-MNIST and show where the results are")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo, replaced each time)")
    p.add_argument("--data-dir")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train", help="train a model from a config (or --model/--dataset) into a run directory",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML experiment file, or a packaged config by name (e.g. fashion_mnist_cnn)")
    p.add_argument("--recipe", help="a packaged recipe for --dataset, e.g. fast (configs/fast/DATASET.yaml; with --model, the recipe written for that model when there is one)")
    add_training_flags(p)
    p.add_argument("--out", help="run directory to create (default runs/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory given by --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint (with --epochs N: "
                                                        "extend it)")

    p = sub.add_parser("evaluate", help="test loss/accuracy, per-class accuracy and confusion matrix of a run")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="one JSON object: test_loss, test_acc, per_class, confusion")
    p.add_argument("--data-dir", metavar="DIR", help=RUN_DATA_HELP)

    p = sub.add_parser("predict", help="classify image files (any format Pillow reads: PNG, JPEG, TIFF, WebP, "
                                         "...) or folders of them with a trained run")
    p.add_argument("run_dir")
    p.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--out", metavar="CSV", help="write file,label,prob[,label_2,prob_2...],error rows here "
                                                "(stdout then gets one summary line unless --json)")
    p.add_argument("--grid", metavar="PNG", help="draw the first 100 images titled 'label, prob=0.87'")
    p.add_argument("--engine", default="torch", metavar="ENGINE",
                   help="torch (default), onnx (RUN_DIR/model.int8.onnx when exported with --quantize int8, "
                        "else RUN_DIR/model.onnx, exported if missing) or auto (the faster)")

    p = sub.add_parser("export", help="write a run's model as ONNX and check it against PyTorch on test images",
                       description="Writes RUN_DIR/model.onnx (or --out FILE): input 'input' = normalised float32 "
                                   "(N, C, H, W); outputs 'logits' and 'probs'; normalisation, classes and input "
                                   "shape in its metadata. Exit status 1 when onnxruntime and PyTorch differ by "
                                   "more than 1e-4 on the test images (then no file is written).")
    p.add_argument("run_dir")
    p.add_argument("--format", default="onnx", metavar="FORMAT", help="export format: onnx (default)")
    p.add_argument("--out", metavar="FILE", help="file to write (default RUN_DIR/model.onnx)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 11..20 (default 17)")
    p.add_argument("--batch", default="dynamic", metavar="dynamic|N", help="batch dimension: dynamic (default) or fixed N")
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx: static int8 quantisation (QDQ, "
                                                         "per-channel weights) calibrated on 300 training images")
    p.add_argument("--max-drop", type=float, default=0.5, metavar="POINTS",
                   help="with --quantize: refuse (write nothing) when int8 loses more test accuracy (default 0.5)")
    p.add_argument("--data-dir", metavar="DIR", help=RUN_DATA_HELP)

    p = sub.add_parser("datasets", help="list datasets or show one's details")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    dsub.add_parser("list", help="registered datasets")
    q = dsub.add_parser("info", help="classes, shapes, files, checksums and where the files are")
    q.add_argument("name")
    q.add_argument("--data-dir")
    q = dsub.add_parser("inspect", help="a folder of your images before training: classes, counts, sizes, bad files")
    q.add_argument("path")
    q.add_argument("--labels", choices=("auto", "subfolders", "filename", "csv"), default="auto")
    q.add_argument("--pattern", help="regex whose first group is the label in a file name")
    q.add_argument("--csv", help="a file,label CSV")
    q.add_argument("--file-column", help="the CSV column (header name) of the file (Keras's x_col)")
    q.add_argument("--label-column", help="the CSV column (header name) of the label (Keras's y_col)")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("augment-preview", help="write a grid of augmented training images for a config")
    p.add_argument("config", help="YAML config with a data.augment section")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="augment-preview.png", help="PNG to write (default augment-preview.png)")
    p.add_argument("-n", type=int, default=8, help="images (rows)")
    p.add_argument("--copies", type=int, default=8, help="augmented copies per image (columns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")

    sub.add_parser("models", help="list registered models")

    p = sub.add_parser("show", help="draw a view of a trained run as PNG files (curves, feature-maps, occlusion, ...)",
                       description="Views: curves, predictions, mistakes, feature-maps, filters, templates, occlusion, "
                                   "maximize, gradcam, saliency, kernels, architecture, or all. PNGs go to "
                                   "RUN_DIR/figures/ (or --out DIR); their paths are printed.")
    p.add_argument("run_dir")
    p.add_argument("what", metavar="WHAT", help="view name, or all")
    p.add_argument("--images", help="test-set indices, e.g. 0,7,26 (feature-maps default)")
    p.add_argument("--layers", nargs="+", metavar="LAYER", help="layer names as `cnnlab summary` prints them")
    p.add_argument("--filter", type=int, default=1, help="channel shown in the feature-map grid (default 1)")
    p.add_argument("-n", type=int, default=16, help="images or filters to draw (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for the PNGs (default RUN_DIR/figures)")
    p.add_argument("--data-dir", metavar="DIR", help=RUN_DATA_HELP)

    p = sub.add_parser("summary", help="Keras-style layer table of a registered model, a YAML config/layer list, a "
                                       "run directory or a Keras .h5/.keras file")
    p.add_argument("model", metavar="MODEL_OR_FILE")
    p.add_argument("--input-shape", metavar="H,W,C", help="input shape (default: the model's tutorial input)")
    p.add_argument("--num-classes", type=int, default=None)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: facts, curves, metrics, confusion, "
                                      "predictions, feature maps, attribution, architecture",
                       description="Writes RUN_DIR/report.html (or --out FILE): every figure embedded, no network "
                                   "needed to open it.")
    p.add_argument("run_dir")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--data-dir", metavar="DIR", help=RUN_DATA_HELP)
    p.add_argument("--maximize", action="store_true", help="also include activation maximisation (slower)")

    p = sub.add_parser("import-keras", help="turn a trained Keras model (.h5 or .keras) into a cnnlab run directory",
                       description="Reads a Keras 2 .h5 or Keras 3 .keras file without TensorFlow, maps its layers "
                                   "onto cnnlab's Keras-named layers, converts the weights and writes a run "
                                   "directory that evaluate, predict, show, report and export work on. Without a "
                                   "Rescaling layer the model gets pixels / 255, as in the tutorials.")
    p.add_argument("model_file", metavar="MODEL", help="a file written by Keras's model.save (.h5 or .keras)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create (default runs/<file name>)")
    p.add_argument("--dataset", help="the dataset the model was trained on (registered or folder:PATH): evaluates "
                                     "its test set now, and evaluate/show/report use it later")
    p.add_argument("--data-dir")
    p.add_argument("--classes", metavar="A,B,...", help="class names in output order, when no --dataset names them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory given by --out")

    p = sub.add_parser("export-metrics", help="write finished runs' epoch metrics as TensorBoard event files or a CSV",
                       description="tensorboard: event files with the live logger's tags (loss/train, loss/val, "
                                   "accuracy/train, accuracy/val, lr; step = epoch) into each RUN_DIR/tensorboard/ "
                                   "(or --out DIR/<run name>/), so tensorboard --logdir runs/ shows older runs "
                                   "next to new ones (a run whose tensorboard/ already has events, logged live, is "
                                   "left as it is unless --overwrite). csv: one file, a row per run and epoch.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=("tensorboard", "csv"))
    p.add_argument("--out", metavar="PATH", help="tensorboard: a folder for one sub-folder per run; csv: the file "
                                                 "(default metrics.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace existing event folders or CSV")

    p = sub.add_parser("lr-find", help="learning-rate range test of a config: loss against lr, suggested rate, PNG",
                       description="fastai's and Lightning's LR range test (Smith 2017): a fresh model trains for "
                                   "--steps steps while the rate grows exponentially from --start-lr to --end-lr; "
                                   "the suggested rate is where the smoothed loss falls fastest. Prints the curve "
                                   "and the suggestion and draws them into --out (PNG). Nothing else is written.")
    p.add_argument("config", nargs="?", help="YAML experiment file or packaged config name (or give --model/--dataset)")
    p.add_argument("--recipe", help="a packaged recipe for --dataset, e.g. fast")
    add_training_flags(p)
    p.add_argument("--out", default="lr-find.png", metavar="PNG", help="the plot (default lr-find.png)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="rate of the first step (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="rate of the last step (default 10)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100)")

    p = sub.add_parser("compare", help="train variants of a config one after another and tabulate/plot them",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=COMPARE_EPILOG)
    p.add_argument("config", nargs="?", metavar="BASE.yaml",
                   help="the config the variants start from; its compare: section lists them when neither "
                        "--vary nor --configs is given")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one variant per value (several --vary: every combination); values parse like --set, "
                        "list values in brackets: model.layers.0.kernel_size=[3,3],[5,5]")
    p.add_argument("--configs", nargs="+", default=[], metavar="YAML", help="whole configs to run beside BASE.yaml")
    add_training_flags(p)  # applied to every variant
    p.add_argument("--out", metavar="DIR", help="folder for the runs and tables (default runs/compare-<base name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier compare folder given by --out")

    p = sub.add_parser("dashboard", help="a local web page to watch, compare and see inside the runs of a folder",
                       description="Serves a dashboard of every run under RUNS_DIR until Ctrl-C and prints its URL: "
                                   "the runs table, live curves of running runs, each run's results and confusion "
                                   "cells, the explorer (activations, kernels, pixel arithmetic, Grad-CAM and other "
                                   "attributions for test, uploaded or drawn images), units, architecture and "
                                   "compare. It reads runs and writes only RUN/.cache/dashboard/.")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="folder of runs (default runs)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only); any other prints a warning")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    return ap


def training_options(args: argparse.Namespace) -> dict:
    """The training options (``runs.options.OPTIONS``) the user gave, typed as argparse parsed them."""
    return {name: getattr(args, name) for name in BY_NAME if getattr(args, name, None) is not None}


def set_overrides(args: argparse.Namespace) -> list[Override]:
    """The ``--set KEY=VALUE`` items as typed ``(key, value)`` pairs."""
    return [parse_override(item) for item in args.overrides]


def print_json(data) -> None:
    print(json.dumps(data, indent=1))


# Library errors write argument and config-key names in backticks; on the command line they become flags.
ARG_FLAGS = {"out": "--out", "overwrite": "--overwrite", "resume": "--resume", "images": "--images",
             "top_k": "--top-k", "grid": "--grid", "opset": "--opset", "batch": "--batch", "quantize": "--quantize",
             "max_drop": "--max-drop", "engine": "--engine",
             "input_shape": "--input-shape", "vary": "--vary", "configs": "--configs", "layers": "--layers",
             "format": "--format", "n": "-n", "copies": "--copies", "maximize": "--maximize", "recipe": "--recipe",
             "config": "--config", "classes": "--classes", "dataset": "--dataset", "start_lr": "--start-lr",
             "end_lr": "--end-lr", "steps": "--steps", "num_classes": "--num-classes", "port": "--port",
             "host": "--host", "runs_dir": "RUNS_DIR"}
KEY_FLAGS = {key: opt for opt in OPTIONS for key in opt.keys[:1]}


def translate(message: str, args: argparse.Namespace) -> str:
    """A library message for the command line: a `name` becomes its flag, unless the user set it by --set."""
    by_set = {item.partition("=")[0].strip() for item in getattr(args, "overrides", None) or ()}

    def flag(m: re.Match) -> str:
        name = m.group(1)
        opt = KEY_FLAGS.get(name) or BY_NAME.get(name)
        if name in by_set or (opt is None and name not in ARG_FLAGS):
            return name
        return opt.flag if opt is not None else ARG_FLAGS[name]

    return re.sub(r"`([A-Za-z_][\w.]*)`", flag, message)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the subcommand; returns the exit status (:data:`EXIT_CODES`; README: Exit codes)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        # start-up: a command imports the library it needs only once it runs (``--help`` stays fast)
        module = importlib.import_module(f"cnnlab.cli.{COMMANDS[args.command]}")
        return getattr(module, "cmd_" + args.command.replace("-", "_"))(args)
    except CnnlabError as exc:
        print(f"error: {translate(str(exc), args)}", file=sys.stderr)
        return EXIT_MISTAKE
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return EXIT_TERMINATED if getattr(exc, "signum", None) == signal.SIGTERM else EXIT_INTERRUPTED


def entry() -> None:
    """The ``cnnlab`` console script and ``python -m cnnlab``: ``main`` then a fast exit.

    Every file a command writes is closed (and renamed into place) before ``main`` returns, so the
    interpreter's teardown only frees memory; with PyTorch loaded that took ~0.6 s on a 2-core CPU (measured
    with ``torch._dynamo`` loaded too, which cnnlab's optimisers no longer import), a quarter of a one-epoch
    MNIST run's fixed cost then.
    """
    for stream in (sys.stdout, sys.stderr):
        # an output that cannot encode a character (PYTHONIOENCODING=ascii, a latin-1 console) gets '?' for it,
        # not a traceback: descriptions and messages use ≥, →, ×
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help (0) / usage errors (2, EXIT_MISTAKE)
        code = exc.code or EXIT_OK
    except BrokenPipeError:  # `cnnlab models | head`: the reader left; not an error of ours
        code = EXIT_OK
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    os._exit(code)
