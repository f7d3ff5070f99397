"""Workflows around training: ``cnnlab demo`` (train + every picture) and ``cnnlab compare`` (variants)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.app.compare import plan, run_compare
from cnnlab.app.report import build_report
from cnnlab.cli.main import EXIT_FAILED, EXIT_OK, set_overrides, training_options
from cnnlab.cli.train import finish, progress
from cnnlab.data.datasets import DatasetMissing, locate
from cnnlab.errors import CnnlabError
from cnnlab.io import shell_word
from cnnlab.runs.experiment import train
from cnnlab.runs.options import experiment_config, option_overrides


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = experiment_config("fashion_mnist_cnn", data_dir=args.data_dir)
    try:
        locate(cfg.data.dataset, cfg.data.data_dir)
    except DatasetMissing as exc:  # offline without the files: two short lines, not the download log
        print(f"note: the full {exc.dataset} is not on this machine and could not be downloaded")
        print(f"note: using the bundled sample instead; cnnlab datasets info {exc.dataset} says where the full files go")
        cfg = experiment_config(cfg, dataset="fashion-mnist-sample")
    out = Path(args.out).expanduser()
    overwrite = out.exists() and (out / "run.json").is_file()  # the demo replaces its own earlier run
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise CnnlabError(f"--out {out} holds something that is not a cnnlab run; the demo will not replace it "
                          "— choose another --out")
    result = train(cfg, out=out, overwrite=overwrite, progress=progress(args))
    if result.failed:
        return finish(result)
    print("Drawing the pictures (report, feature maps, filters, occlusion, Grad-CAM, maximisation, ...)")
    report = build_report(out, data_dir=args.data_dir, maximize=True, figures_dir=out / "figures",
                          extra_views=("kernels", "saliency"))  # the two views the page leaves out
    finish(result, what_next=False)
    print(f"Open: {report.resolve().as_uri()} (everything on one page), figures in {out / 'figures'}")
    print(f"Next: cnnlab show {shell_word(out)} feature-maps --layers conv2d_1   cnnlab predict {shell_word(out)} IMAGE.png")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    overrides = [*option_overrides(training_options(args)), *set_overrides(args)]
    variants, out = plan(args.config, vary=args.vary, configs=args.configs, overrides=overrides, out=args.out)
    result = run_compare(variants, out, overwrite=args.overwrite, progress=progress(args))
    print()
    print(result.markdown)
    print(f"\nCompared in: {out} (compare.md, compare.csv, compare.png)")
    return EXIT_FAILED if result.failed else EXIT_OK
