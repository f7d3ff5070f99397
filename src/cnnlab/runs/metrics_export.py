"""``cnnlab export-metrics``: finished runs' epoch metrics as TensorBoard event files or one CSV.

TensorBoard events use the tags and steps of the live logger (:func:`cnnlab.runs.loggers.epoch_scalars`,
step = epoch), written into ``RUN_DIR/tensorboard/`` by default, so ``tensorboard --logdir runs/`` shows
older runs next to runs logged live. The CSV holds one row per run and epoch (``run`` + history.csv's
columns) for a spreadsheet or pandas.
"""

from __future__ import annotations

import csv
import importlib
import io
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError, one_of
from cnnlab.io import replace_folder, temp_folder_beside, write_atomic
from cnnlab.runs.loggers import TENSORBOARD, epoch_scalars, require
from cnnlab.runs.run_dir import HISTORY_COLUMNS, RunDir

FORMATS = ("tensorboard", "csv")
CSV_NAME = "metrics.csv"  # the CSV's name without `out`, and the one suggested when `out` is a folder


def export_metrics(runs: Sequence[str | Path], fmt: str, *, out: str | Path | None = None,
                   overwrite: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Writes the epoch metrics of ``runs`` as TensorBoard event folders or one CSV file.

    Args:
        runs: run directories.
        fmt: ``tensorboard`` or ``csv``.
        out: ``tensorboard``: a folder that gets one sub-folder per run (default: each run's own
            ``tensorboard/``); ``csv``: the file (default ``metrics.csv``).
        overwrite: replace event folders / a CSV that exist. Without it and without ``out``, a run whose own
            ``tensorboard/`` already holds events (logged live, or exported before) is left as it is and named
            in a ``note:`` line, so ``runs/*`` adds the older runs next to the new ones.
        log: receives those notes.

    Returns:
        The event folders written, or the CSV file.

    Raises:
        CnnlabError: an unknown format, a folder that is not a run, a run without a finished epoch, an existing
            output without ``overwrite``, or tensorboard missing (``cnnlab[tensorboard]``); nothing is written.
    """
    if fmt not in FORMATS:
        raise one_of("`format`", fmt, FORMATS)
    if not runs:
        raise CnnlabError("no run directories given; pass at least one")
    unique = list({Path(r).resolve(): r for r in runs}.values())  # `runs/* runs/a` names runs/a twice: once
    histories = [(run, run.read_history()) for run in (RunDir.open(r) for r in unique)]
    for run, history in histories:
        if not history:
            raise CnnlabError(f"{run.path} has no finished epoch (metrics.jsonl is empty); nothing to export")
    if fmt == "csv":
        return [_write_csv(histories, Path(out) if out else Path(CSV_NAME), overwrite)]
    return _write_events(histories, Path(out) if out else None, overwrite, log)


def _write_csv(histories: list[tuple[RunDir, list[dict]]], path: Path, overwrite: bool) -> Path:
    if path.exists() and not path.is_dir() and not overwrite:  # a folder: atomic_path says to name a file
        raise CnnlabError(f"{path} already exists; pass `overwrite` to replace it or choose another `out`")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=("run", *HISTORY_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for run, history in histories:
        for m in history:
            writer.writerow({"run": str(run.path), **{k: "" if m.get(k) is None else m[k] for k in HISTORY_COLUMNS}})
    return write_atomic(path, buf.getvalue(), name=CSV_NAME)  # --out DIR: the error suggests DIR/metrics.csv


def _targets(histories: list[tuple[RunDir, list[dict]]], out: Path | None, overwrite: bool,
             log: Callable[[str], None]) -> list[Path | None]:
    """One event folder per run: ``RUN/tensorboard`` or ``OUT/<run name>`` (numbered when names repeat);
    None for a run whose own folder already has events (kept: they may be a live log's, richer than these)."""
    targets: list[Path | None] = []
    kept = []
    for run, _ in histories:
        target = run.path / TENSORBOARD if out is None else out / run.path.name
        n = 2
        while out is not None and target in targets:
            target, n = out / f"{run.path.name}-{n}", n + 1
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            if out is not None or len(histories) == 1:  # a place the user named: refuse, as for any output
                raise CnnlabError(f"{target} already holds event files; pass `overwrite` to replace them")
            kept.append(target)
            target = None
        targets.append(target)
    if kept and all(t is None for t in targets):
        raise CnnlabError(f"every run already holds event files ({kept[0]}, ...); pass `overwrite` to replace them")
    if kept:
        log(f"note: left {len(kept)} run(s) whose tensorboard/ already holds events as they are: "
            f"{', '.join(str(k.parent) for k in kept)} (exporting with overwrite replaces them)")
    return targets


def _write_events(histories: list[tuple[RunDir, list[dict]]], out: Path | None, overwrite: bool,
                  log: Callable[[str], None]) -> list[Path]:
    require("tensorboard", "tensorboard", "format")
    # start-up time: torch.utils.tensorboard only for this command
    writer_cls = importlib.import_module("torch.utils.tensorboard").SummaryWriter
    targets = _targets(histories, out, overwrite, log)
    for (_, history), target in zip(histories, targets, strict=True):
        if target is None:
            continue
        tmp = temp_folder_beside(target)
        try:  # written beside and swapped in whole: no half-written event folder
            writer = writer_cls(str(tmp))
            for m in history:
                for tag, value in epoch_scalars(m).items():
                    writer.add_scalar(tag, value, int(m["epoch"]))
            writer.close()
            replace_folder(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [t for t in targets if t is not None]
