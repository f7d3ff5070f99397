"""The runs table's index: every run folder under RUNS_DIR, compare folders' variants included.

A row comes from a run's run.json (status, dataset, parameters, planned epochs, test accuracy, wall time,
start), its config.yaml (model name, ``callbacks.min_delta``) and its metrics.jsonl (epochs done; the best
epoch by :func:`cnnlab.runs.history.best_epoch`, the one definition training and the report use). Rows are
kept in memory, and between servers in a JSON file in the user's cnnlab cache; a run's files are read again
only when their size or modification time changed, so listing 1,000 runs costs a directory scan and a few
``stat`` calls per run.

Runs are addressed by an id made from their path under RUNS_DIR (``compare-lr~lr-0.01``), looked up in
this index; a URL never carries a path. A folder that cannot be read is listed as ``broken`` with the
reason, never an error page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cnnlab.app.compare import MARKER as COMPARE_MARKER
from cnnlab.errors import CnnlabError
from cnnlab.files import read_text
from cnnlab.io import write_atomic
from cnnlab.runs.history import best_epoch
from cnnlab.runs.progress import read_progress, trainer_alive
from cnnlab.runs.run_dir import CONFIG, META, METRICS, RunDir

STORE_VERSION = 1  # of the JSON an index keeps between servers; bump when RunRow changes
MAX_DEPTH = 4  # RUNS_DIR/a/b/c/run: deep enough for compare folders inside project folders
STATUS = {"done": "finished", "running": "running", "failed": "failed", "interrupted": "interrupted"}
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on a first scan of many runs


@dataclass
class RunRow:
    """One row of the runs table (JSON-ready through :meth:`to_dict`)."""

    id: str
    name: str  # path under RUNS_DIR, posix
    group: str | None = None  # the compare folder holding it
    status: str = "broken"
    dataset: str | None = None
    model: str | None = None
    params: int | None = None
    epochs: int | None = None  # done
    epochs_planned: int | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    monitor: str | None = None
    test_acc: float | None = None
    wall_seconds: float | None = None
    started: str | None = None
    error: str | None = None  # why a broken folder is broken, or why a run failed
    path: Path = field(default=Path("."), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in ROW_FIELDS}


ROW_FIELDS = tuple(f.name for f in fields(RunRow) if f.name != "path")
Key = tuple[int, int] | None  # (mtime_ns, size) of a file, None when it is missing


def _stat_key(path: str | os.PathLike) -> Key:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved, symlinks followed) lies inside ``root`` (resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a symlink loop
        return False


def is_run_folder(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, META)) or os.path.isfile(os.path.join(path, CONFIG))


def make_id(rel: str) -> str:
    """A URL-safe id for the run at ``rel`` (posix path under RUNS_DIR): its parts joined by ``~``; parts
    with other characters than letters, digits and ``._-`` are replaced and a short hash keeps them apart."""
    parts = rel.split("/")
    if all(_SAFE.match(p) and not p.startswith(".") for p in parts):
        return "~".join(parts)
    clean = "~".join(re.sub(r"[^A-Za-z0-9._-]+", "-", p).strip(".-") or "run" for p in parts)
    return f"{clean}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"


def scan(root: Path) -> list[tuple[Path, str, str | None]]:
    """(run folder, its path under ``root`` in posix form, compare folder or None) for every run under
    ``root``, in path order. RUNS_DIR may itself be one run (its own name is then its path).

    Hidden folders (``.cache``) are skipped, and so is anything whose real location (symlinks followed)
    is outside ``root``.
    """
    real_root = root.resolve()
    if is_run_folder(root):
        return [(root, root.name, None)]
    found: list[tuple[Path, str, str | None]] = []

    def walk(folder: str, prefix: str, depth: int, group: str | None) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith(".") or not e.is_dir():
                continue
            if e.is_symlink() and not _inside(Path(e.path), real_root):
                continue
            rel = prefix + e.name
            if is_run_folder(e.path):
                found.append((Path(e.path), rel, group))
            elif depth < MAX_DEPTH:
                is_compare = os.path.isfile(os.path.join(e.path, COMPARE_MARKER))
                walk(e.path, rel + "/", depth + 1, rel if is_compare else group)

    walk(str(root), "", 1, None)
    return found


def _model_name(name: str | None, layers: int) -> str | None:
    # a layer list is the model; model.name is then only the unused default
    return f"custom ({layers} layers)" if layers else name


def top_sections(text: str, names: tuple[str, ...]) -> str:
    """The top-level blocks ``names`` of a YAML mapping, each from its ``name:`` line to the next top-level
    key: YAML on its own, so parsing just them gives the same values at a fraction of the cost."""
    out, keep = [], False
    for line in text.splitlines():
        if line[:1] and not line[0].isspace() and line[0] not in "#-":
            keep = line.split(":", 1)[0].strip() in names
        if keep:
            out.append(line)
    return "\n".join(out)


def _from_config(run: RunDir) -> tuple[str | None, float]:
    """(model, callbacks.min_delta) from config.yaml, for runs whose run.json predates having them."""
    text = read_text(run.file(CONFIG)) if run.file(CONFIG).exists() else ""  # a FIFO: an error, not a hang
    # a resolved config is ~80 lines and parsing it all is ~2 ms: for 1,000 older runs, most of a listing
    cfg = yaml.load(top_sections(text, ("model", "callbacks")), Loader=_Loader)
    if not isinstance(cfg, dict):  # an unusual layout: parse the whole file
        cfg = yaml.load(text, Loader=_Loader) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{CONFIG} is not a mapping")
    model = cfg.get("model") or {}
    return _model_name(model.get("name"), len(model.get("layers") or ())), float(
        (cfg.get("callbacks") or {}).get("min_delta") or 0.0)


def read_row(path: Path, rid: str, name: str, group: str | None, keys: tuple[Key, Key, Key] | None = None) -> RunRow:
    """The row of the run at ``path``; a damaged folder gives a ``broken`` row naming the problem.

    Args:
        keys: the (mtime_ns, size) of run.json, config.yaml and metrics.jsonl when the caller has them.
    """
    row = RunRow(rid, name, group, path=path)
    run = RunDir(path)
    keys = keys or tuple(_stat_key(run.file(f)) for f in (META, CONFIG, METRICS))
    if keys[0] is None:
        row.error = f"no {META} (training never got past data preparation, or not a cnnlab run)"
        return row
    if keys[1] is None:  # every page of the run needs its config: say so here, not "finished" then errors
        row.error = f"no {CONFIG} (the run's config is gone; the run directory is damaged)"
        return row
    try:
        meta = run.meta  # every field checked by type (runs/records.py); never blocks on a FIFO
        if "min_delta" in meta:  # written by training since the dashboard: no YAML to parse (~2 ms a run)
            row.model, min_delta = _model_name(meta.get("model"), meta.get("model_layers") or 0), meta["min_delta"]
        else:
            row.model, min_delta = _from_config(run)
        history = run.read_history()
    except Exception as exc:  # any damage: list the folder as broken with the reason, never fail the page
        said = str(exc) if isinstance(exc, CnnlabError) else f"{type(exc).__name__}: {exc}"  # ours say it all
        row.error = said.splitlines()[0][:200]
        return row
    row.status = STATUS.get(meta.get("status"), meta.get("status") or "unknown")
    row.dataset, row.params, row.epochs_planned = meta.get("dataset"), meta.get("params"), meta.get("epochs_planned")
    row.test_acc, row.wall_seconds = meta.get("test_acc"), meta.get("wall_seconds")
    row.epochs = len(history)
    row.monitor = meta.get("monitor", "val_loss")
    try:
        best = best_epoch(history, row.monitor, meta.get("mode", "auto"), min_delta)
    except Exception:  # an unknown monitor name in a hand-edited run.json
        best = None
    if best is not None:
        row.best_epoch, row.best_val_acc = best.get("epoch"), best.get("val_acc")
    row.started = meta.get("started")
    if row.started is None and keys[1]:  # runs from before run.json had it: when config.yaml was written
        row.started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(keys[1][0] / 1e9))
    row.error = meta.get("failure")
    return row


class RunIndex:
    """Every run under ``root``, refreshed at most every ``max_age`` seconds (thread-safe).

    Args:
        root: RUNS_DIR.
        max_age: seconds a listing may be reused before the folder is scanned again.
        store: a JSON file that keeps the rows and their files' sizes and times between servers (in the
            user's cnnlab cache, never in RUNS_DIR): a new server re-reads only the runs that changed.
    """

    def __init__(self, root: str | os.PathLike, max_age: float = 1.0, store: Path | None = None) -> None:
        self.root = Path(root)
        self.max_age = max_age
        self.store = store
        self._rows: dict[str, RunRow] = {}  # as shown
        self._raw: dict[str, RunRow] = {}  # as read, by id
        self._keys: dict[str, tuple] = {}
        self._scanned = float("-inf")
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        """Rows of an earlier server from ``store`` (any problem: start empty, the files are read again)."""
        try:
            data = json.loads(self.store.read_text()) if self.store else None
            if not data or data.get("version") != STORE_VERSION or data.get("root") != str(self.root.resolve()):
                return
            single = is_run_folder(self.root)  # RUNS_DIR is one run: its row's name is the folder's own
            for item in data["rows"]:
                key = tuple(tuple(k) if k else None for k in item.pop("key"))
                row = RunRow(**item, path=self.root if single else self.root / item["name"])
                self._raw[row.id], self._keys[row.id] = row, key
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._raw, self._keys = {}, {}

    def _save(self) -> None:
        rows = [{**row.to_dict(), "key": self._keys[rid]} for rid, row in self._raw.items()]
        # no cache (read-only home; atomic writes report it as a CnnlabError): the next server reads the files
        with contextlib.suppress(OSError, CnnlabError):
            write_atomic(self.store, json.dumps({"version": STORE_VERSION, "root": str(self.root.resolve()),
                                                 "rows": rows}))

    def rows(self, *, fresh: bool = False) -> list[RunRow]:
        """All rows in path order; rescanned when older than ``max_age`` or when ``fresh``."""
        with self._lock:
            if fresh or time.monotonic() - self._scanned > self.max_age:
                self._refresh()
            return list(self._rows.values())

    def get(self, run_id: str) -> RunRow | None:
        """The row with this id, or None (a scan newer than ``max_age`` is tried before giving up)."""
        if run_id not in {r.id for r in self.rows()}:
            return next((r for r in self.rows(fresh=True) if r.id == run_id), None)
        return self._rows.get(run_id)

    def _refresh(self) -> None:
        changed = False
        rows: dict[str, RunRow] = {}
        raw: dict[str, RunRow] = {}
        keys: dict[str, tuple] = {}
        for path, rel, group in scan(self.root):
            rid = make_id(rel)
            folder = str(path)
            key = (_stat_key(f"{folder}/{META}"), _stat_key(f"{folder}/{CONFIG}"), _stat_key(f"{folder}/{METRICS}"))
            row = self._raw.get(rid)
            if row is None or self._keys.get(rid) != key or row.group != group:
                row, changed = read_row(path, rid, rel, group, key), True
            raw[rid], keys[rid] = row, key
            if row.status == "running" and trainer_alive(read_progress(RunDir(path))) is False:
                # run.json still says running, but the process that trained it is gone (SIGKILL, power cut)
                row = replace(row, status="interrupted", error="the training process is gone (killed?)")
            rows[rid] = row
        changed = changed or raw.keys() != self._raw.keys()
        self._raw, self._rows, self._keys = raw, rows, keys
        self._scanned = time.monotonic()
        if changed and self.store is not None:
            self._save()
