"""``cnnlab compare``: train variants of an experiment one after another and put them side by side.

Variants come from ``--vary KEY=V1,V2`` flags (every combination of the listed values), from ``--configs``
(whole YAML files), or, when neither is given, from the base YAML's own ``compare:`` section. Each variant
is an ordinary run directory under the compare folder, trained by :func:`cnnlab.runs.experiment.train` from its own
fully resolved config; since only the varied keys differ, every variant starts from the same seed and data.
A variant that fails (say, an exercise's layer list that shrinks the image below a kernel) is recorded with
its one-line error and the others still run.

::

    runs/compare-<base>/
      <variant>/        a normal run directory per variant (cnnlab report / show / evaluate work on it)
      compare.md        the Markdown table that is printed at the end
      compare.csv       the same numbers, unrounded, for spreadsheets
      compare.png       validation accuracy and training loss per epoch, one line per variant
      compare.json      everything above plus per-epoch histories (also marks the folder as a compare folder)
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import (
    CompareConfig,
    Config,
    Override,
    check_value,
    config_path,
    from_dict,
    load_config,
    parse_value,
    read_yaml,
    replace,
)
from cnnlab.errors import CnnlabError
from cnnlab.io import write_atomic
from cnnlab.plots.common import save_figure
from cnnlab.plots.training import plot_variants
from cnnlab.runs.experiment import train
from cnnlab.runs.history import run_best_epoch
from cnnlab.runs.options import layer_lists
from cnnlab.runs.run_dir import RunDir, numbered, prepare_folder

MARKER, TABLE, CSV, PLOT = "compare.json", "compare.md", "compare.csv", "compare.png"
VARY_HELP = ("expected KEY=V1,V2,... e.g. model.layers.0.filters=16,64 (list values in brackets: "
             "model.layers.0.kernel_size=[3,3],[5,5])")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """One configuration to train.

    Attributes:
        name: its folder under the compare directory (filesystem-safe, unique).
        changed: what distinguishes it, e.g. ``model.layers.0.filters=16``.
        cfg: the fully resolved config; None when it could not be built.
        error: why the config could not be built (the variant is then recorded as failed).
    """

    name: str
    changed: str
    cfg: Config | None = None
    error: str | None = None


@dataclass
class VariantResult:
    """What one variant's training left: the table row plus its per-epoch history."""

    variant: str
    changed: str
    status: str = "failed"
    params: int | None = None
    sec_per_epoch: float | None = None
    train_acc: float | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    best_epoch: int | None = None
    best_val_acc: float | None = None
    epochs: int = 0
    stop_reason: str | None = None
    error: str | None = None
    run_dir: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompareResult:
    """All variants' rows and the Markdown table of them."""

    out: Path
    results: list[VariantResult]
    markdown: str

    @property
    def failed(self) -> list[VariantResult]:
        return [r for r in self.results if r.status != "done"]


# ------------------------------------------------------------------------------------------- parsing


def split_values(text: str) -> list[str] | None:
    """Splits ``V1,V2,...`` at the commas outside brackets, braces and quotes; None if they are unbalanced."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth or quote:
        return None
    return [*parts, text[start:].strip()]


def yaml_text(value: Any) -> str:
    """One-line YAML of ``value`` that :func:`cnnlab.config.apply_override` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1_000_000).strip()
    return text[:-3].strip() if text.endswith("\n...") else text  # a bare scalar ends with YAML's '...'


def parse_vary(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["train.lr=0.001,0.01", ...]`` → ``{"train.lr": [0.001, 0.01], ...}``.

    Raises:
        CnnlabError: malformed item, empty or repeated value, or a key given twice.
    """
    vary: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not text.strip() or not re.fullmatch(r"[\w-]+(\.[\w-]+)*", key):
            raise CnnlabError(f"`vary` {item!r}: {VARY_HELP}")
        parts = split_values(text)
        if parts is None:
            raise CnnlabError(f"`vary` {item!r}: unbalanced brackets or quotes; {VARY_HELP}")
        if not all(parts):
            raise CnnlabError(f"`vary` {item!r}: empty value between commas; {VARY_HELP}")
        if key in vary:
            raise CnnlabError(f"`vary` {key} is given twice; list all its values in one: {key}=V1,V2")
        vary[key] = _check_values(f"`vary` {key}", [parse_value(p) for p in parts])
    return vary


def _check_values(where: str, values: Any) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise CnnlabError(f"{where} must list the values to try, e.g. [16, 64]")
    texts = [yaml_text(v) for v in values]
    dup = next((t for i, t in enumerate(texts) if t in texts[:i]), None)
    if dup is not None:
        raise CnnlabError(f"{where} lists {dup} twice; give each value once")
    return values


# -------------------------------------------------------------------------------------------- naming


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.") or "x"


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """Shortest key suffixes that are unique and not bare indices: model.layers.0.filters → filters."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        n = 1
        while n < len(parts) and (parts[-n].isdigit() or any(
                o != key and o.split(".")[-n:] == parts[-n:] for o in keys)):
            n += 1
        labels[key] = ".".join(parts[-n:])
    return labels


def _unique(name: str, taken: set[str]) -> str:
    name = name[:60].rstrip("_.-") or "variant"
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


# -------------------------------------------------------------------------------------------- planning


def plan(base: str | Path | None, *, vary: Sequence[str] = (), configs: Sequence[str | Path] = (),
         overrides: Sequence[Override] = (), out: str | Path | None = None) -> tuple[list[Variant], Path]:
    """The variants to train and the folder they go to.

    Args:
        base: the YAML (or packaged config name) the variants start from (optional when ``configs`` are given).
        vary: ``KEY=V1,V2`` items; each combination of values is one variant of every config.
        configs: more YAML files to run beside ``base`` (relative to the current folder).
        overrides: typed ``(key, value)`` pairs applied to every variant before its varied values (the
            training options and ``--set`` of the CLI).
        out: the compare folder (default ``runs/compare-<base name>``, numbered if it exists).

    Raises:
        CnnlabError: bad ``--vary`` syntax, missing files, nothing to compare, or no variant has a valid config.
    """
    spec = parse_vary(vary)
    if base is None and not configs:
        raise CnnlabError("compare needs a base config or `configs` A.yaml B.yaml, e.g. "
                          "cnnlab compare configs/exercises/filters.yaml")
    paths = [config_path(base)] if base is not None else []
    if spec or configs:
        paths += [config_path(c) for c in configs]
    else:  # the YAML's own compare: section (paths relative to the YAML)
        section = from_dict(CompareConfig, read_yaml(paths[0]).get("compare"), "compare.")
        spec = {k: _check_values(f"{base}: compare.vary.{k}", v) for k, v in section.vary.items()}
        paths += [Path(os.path.normpath(paths[0].parent / c)) for c in section.configs]
        if not spec and len(paths) == 1:
            raise CnnlabError(f"{base} has no compare: section; say what to `vary`, e.g. train.lr=0.001,0.01, "
                              "or add `configs` OTHER.yaml")
    for key, values in spec.items():  # a value its key can never take is a typo: refused before any training
        for value in values:
            try:
                check_value(key, value)
            except CnnlabError as exc:  # named as typed in `vary`, not as the option flag of that key
                raise CnnlabError(f"{str(exc).replace(f'`{key}`', key)} (in `vary`)") from None
    raws = [(p, read_yaml(p)) for p in paths]
    labels = _labels(list(spec))
    taken = {MARKER, TABLE, CSV, PLOT}
    variants = []
    for path, raw in raws:
        own = _safe(str(raw.get("name") or path.stem))
        for combo in itertools.product(*spec.values()) if spec else [()]:
            changes = [(k, yaml_text(v)) for k, v in zip(spec, combo, strict=True)]
            parts = [f"{labels[k]}-{_safe(t)}" for k, t in changes]
            name = _unique("_".join([own, *parts] if len(raws) > 1 or not parts else parts), taken)
            changed = ", ".join(f"{k}={t}" for k, t in changes)
            if len(raws) > 1:
                changed = f"config {path}" + (f", {changed}" if changed else "")
            variants.append(_resolve(name, changed, raw, [*overrides, *zip(spec, combo, strict=True)]))
    if all(v.error for v in variants):
        raise CnnlabError(variants[0].error)
    folder = Path(out).expanduser() if out else numbered(Path("runs") / f"compare-{_safe(paths[0].stem)}")
    return variants, folder


def _resolve(name: str, changed: str, raw: dict, overrides: list[Override]) -> Variant:
    try:
        cfg = load_config(None, overrides, base=copy.deepcopy(raw), layer_lists=layer_lists)
    except CnnlabError as exc:
        return Variant(name, changed, None, str(exc))
    note = f"compare variant {name}" + (f" ({changed})" if changed else "")
    desc = f"{cfg.description} [{note}]" if cfg.description else note
    # The variant's config.yaml must not carry the compare section: training it again is one run.
    return Variant(name, changed, replace(cfg, compare=CompareConfig(), description=desc))


# ---------------------------------------------------------------------------------------------- running


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if isinstance(exc, CnnlabError) else f"{type(exc).__name__}: {text}"


def _collect(res: VariantResult, run_dir: Path) -> None:
    """Fills the row from what the run directory holds (also after a failure mid-training)."""
    if not (run_dir / "run.json").is_file():
        return
    run = RunDir(run_dir)
    meta = run.meta
    hist = run.read_history()
    res.params = meta.get("params")
    res.history = [{k: h.get(k) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")}
                   for h in hist]
    res.epochs = len(hist)
    if hist:
        res.sec_per_epoch = sum(h["seconds"] for h in hist) / len(hist)
        res.train_acc = hist[-1].get("train_acc")
        best = run_best_epoch(meta, hist)
        if best is not None:
            res.best_epoch, res.best_val_acc = best["epoch"], best.get("val_acc")
    res.stop_reason = meta.get("stop_reason")


def run_compare(variants: Sequence[Variant], out: str | Path, *, overwrite: bool = False,
                progress: bool | None = None, log: Log = print) -> CompareResult:
    """Trains every variant into ``out/<name>/`` and writes the table, CSV, JSON and plot after each one.

    A variant that fails before its training starts (a config or data mistake) leaves no run folder; when
    none of them started, nothing is left behind either (``out`` is removed again, or left empty if it was
    an empty folder) and the mistakes are raised.

    Raises:
        CnnlabError: ``out`` exists (without ``overwrite``) or is not a compare folder; no variant could start.
    """
    out = Path(out).expanduser()
    was_there = out.is_dir()
    prepare_folder(out, overwrite=overwrite, marker=MARKER, what="compare folder")
    results: list[VariantResult] = []
    try:
        _run_variants(variants, out, results, progress, log)
    except BaseException:
        _discard_if_nothing_ran(out, results, was_there)
        raise
    if _discard_if_nothing_ran(out, results, was_there):
        raise CnnlabError("no variant could start training: " + "; ".join(f"{r.variant}: {r.error}" for r in results))
    return CompareResult(out, results, markdown_table(results))


def _discard_if_nothing_ran(out: Path, results: Sequence[VariantResult], was_there: bool) -> bool:
    """Removes the compare folder when no variant left a run folder in it (a table of only errors is no result)."""
    if any(r.run_dir and (Path(r.run_dir) / "run.json").is_file() for r in results):
        return False
    shutil.rmtree(out, ignore_errors=True)
    if was_there:
        out.mkdir(exist_ok=True)  # the user's (empty, or overwritten) folder stays
    return True


def _run_variants(variants: Sequence[Variant], out: Path, results: list[VariantResult], progress: bool | None,
                  log: Log) -> None:
    for i, v in enumerate(variants, 1):
        log(f"\n=== Variant {i}/{len(variants)}: {v.name}" + (f" ({v.changed})" if v.changed else "") + " ===")
        res = VariantResult(v.name, v.changed, error=v.error)
        results.append(res)
        if v.cfg is not None:
            run_dir = out / v.name
            res.run_dir = str(run_dir)
            try:
                trained = train(v.cfg, out=run_dir, progress=progress, log=log)
                res.error = trained.failed
                if trained.test is not None and not trained.failed:
                    res.status, res.test_acc, res.test_loss = "done", trained.test.acc, trained.test.loss
            except KeyboardInterrupt:
                res.error = "interrupted"
                _collect(res, run_dir)
                write_outputs(out, results)
                raise
            except Exception as exc:  # one broken variant must not stop the others; its error goes in the table
                res.error = _one_line(exc)
            _collect(res, run_dir)
        if res.error:
            log(f"Variant {v.name} failed: {res.error}")
        write_outputs(out, results)


# ---------------------------------------------------------------------------------------------- outputs


def markdown_table(results: Sequence[VariantResult]) -> str:
    """The comparison as a GitHub-flavoured Markdown table (what the command prints)."""
    head = ["variant", "changed", "params", "s/epoch", "train acc", "test acc", "test loss", "best epoch (val acc)",
            "epochs", "stop"]
    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    rows = []
    for r in results:
        best = "" if r.best_epoch is None else str(r.best_epoch) + (
            f" ({r.best_val_acc:.4f})" if r.best_val_acc is not None else "")
        stop = f"failed: {r.error}" if r.status != "done" else r.stop_reason or "completed"
        rows.append([r.variant, r.changed, fmt(r.params, ","), fmt(r.sec_per_epoch, ".1f"), fmt(r.train_acc, ".4f"),
                     fmt(r.test_acc, ".4f"), fmt(r.test_loss, ".4f"), best, str(r.epochs), stop])

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    align = ["---", "---", *["---:"] * 7, "---"]
    return "\n".join([line(head), "|" + "|".join(align) + "|", *(line(r) for r in rows)])


def csv_text(results: Sequence[VariantResult]) -> str:
    """One row per variant with every table value unrounded (the per-epoch history stays in compare.json)."""
    columns = [f.name for f in fields(VariantResult) if f.name != "history"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return buf.getvalue()


def plot_compare(results: Sequence[VariantResult], title: str = "Compare"):
    """Validation accuracy (left) and training loss (right) per epoch, one line per variant."""
    return plot_variants([(r.variant, r.status != "done", r.history) for r in results], title)


def write_outputs(out: Path, results: Sequence[VariantResult]) -> None:
    """(Re)writes compare.md, compare.csv, compare.json and compare.png from the results so far."""

    write_atomic(out / TABLE, markdown_table(results) + "\n")
    write_atomic(out / CSV, csv_text(results))
    write_atomic(out / MARKER, json.dumps({"variants": [asdict(r) for r in results]}, indent=1) + "\n")
    save_figure(plot_compare(results, f"Compare {out.name}"), out / PLOT)
