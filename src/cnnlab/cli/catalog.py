"""Commands about what cnnlab knows: datasets, models, summary."""

from __future__ import annotations

import argparse

from cnnlab.cli.main import EXIT_OK, print_json
from cnnlab.data.datasets import CIFAR_ARCHIVE, DATASETS, where_is
from cnnlab.errors import CnnlabError
from cnnlab.models.catalog import catalog


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.action == "inspect":
        from cnnlab.data.inspection import inspect_folder

        found = inspect_folder(args.path, labels=args.labels, pattern=args.pattern, csv=args.csv,
                               file_column=args.file_column, label_column=args.label_column)
        if args.json:
            print_json(found.to_dict())
        else:
            print("\n".join(found.to_lines()))
        return EXIT_OK
    if args.action == "list":
        for name in DATASETS.names():
            print(f"{name:<22} {DATASETS.get(name).description}")
        print("folder:PATH            your own images (class subfolders, cat.123.jpg names, or a CSV)")
        return EXIT_OK
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
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    for name, description in catalog():
        print(f"{name:<20} {description}")
    print("\nAny Keras-style layer list works too: model.layers in a YAML config (see configs/).")
    return EXIT_OK


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
    # lazy: cnnlab.app.summary reads configs (PyYAML) that `cnnlab models` and `cnnlab datasets`, served by this
    # module too, never use; it imports torch itself only for a model that is not a layer list
    from cnnlab.app.summary import summary

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    print(summary(args.model, input_shape=shape, num_classes=args.num_classes))
    return EXIT_OK
