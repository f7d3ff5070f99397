"""The run directory: everything one training run leaves behind.

::

    RUN_DIR/
      config.yaml          fully resolved config (load it again to repeat the run)
      run.json             metadata: status, data shape, classes, normaliser, engine, versions
      metrics.jsonl        one JSON object per epoch (epoch, train_loss, train_acc, val_loss, val_acc, seconds, lr)
      history.csv          the same, for spreadsheets
      summary.txt          Keras-style model summary and final results
      results.json         test-set evaluation (loss, accuracy, per-class accuracy, confusion matrix)
      model.safetensors    final weights (the best epoch's when restore_best is on)
      checkpoints/last/    weights + training state of the last epoch (resume)
      checkpoints/best/    the same for the best epoch by callbacks.monitor
      figures/             PNGs written by ``cnnlab show``
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from cnnlab.config import Config, dump_yaml, from_dict, read_yaml
from cnnlab.errors import CnnlabError
from cnnlab.files import read_text, regular_file
from cnnlab.io import cannot_write, file_mode, write_atomic
from cnnlab.runs.records import REDO, check_config, check_meta, check_row, parse_json

CONFIG, META, METRICS, HISTORY = "config.yaml", "run.json", "metrics.jsonl", "history.csv"
SUMMARY, RESULTS, WEIGHTS, CHECKPOINTS, FIGURES = "summary.txt", "results.json", "model.safetensors", "checkpoints", "figures"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr")


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.lock: RunLock | None = None  # held when :meth:`create` was asked to take it

    # ------------------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: str | os.PathLike, *, overwrite: bool = False, lock: bool = False) -> RunDir:
        """A new, empty run directory; an existing one is replaced only with ``overwrite``, only if it is a run,
        and never while a process trains it (its lock is held).

        Args:
            path: the folder.
            overwrite: replace a run directory there.
            lock: return the run with its :class:`RunLock` held (``run.lock``), taken before anything is
                replaced, so that no other process can start training it in between.

        Raises:
            CnnlabError: ``path`` holds something and ``overwrite`` is off, it is not a run directory, or it is
                being trained.
        """
        p = Path(path).expanduser()
        held = RunLock(p).acquire() if overwrite and (p / META).is_file() else None  # refuses a live run
        try:
            run = cls(prepare_folder(p, overwrite=overwrite, marker=META, what="run directory", resumable=True,
                                     keep=(RunLock.NAME,) if held else ()))
            if lock and held is None:
                held = RunLock(run.path).acquire()
        except BaseException:
            if held is not None:
                held.release()
            raise
        if not lock and held is not None:
            held.release()
            held = None
        run.lock = held
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """An existing run directory, or a one-line error saying what is missing."""
        p = Path(path).expanduser()
        if not p.is_dir():
            raise CnnlabError(f"{p} is not a directory; pass a run directory written by cnnlab train")
        if not regular_file(p / CONFIG, fix=REDO) or not regular_file(p / META, fix=REDO):
            raise CnnlabError(f"{p} is not a cnnlab run directory (no {CONFIG} / {META}); pass a folder written by "
                              "cnnlab train")
        return cls(p)

    def discard(self, *, keep_folder: bool = False) -> None:
        """Removes everything a run that never finished an epoch wrote (``keep_folder``: the folder stays, empty,
        as when the user made it)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if keep_folder:
            self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    # ---------------------------------------------------------------------------------- contents

    def write_config(self, cfg: Config) -> None:
        write_atomic(self.file(CONFIG), dump_yaml(cfg))

    def read_config(self) -> Config:
        path = self.file(CONFIG)
        regular_file(path, fix=REDO)
        return from_dict(Config, check_config(read_yaml(path), path), "")

    @property
    def meta(self) -> dict[str, Any]:
        path = self.file(META)
        try:
            text = read_text(path, fix=REDO)
        except OSError as exc:
            raise CnnlabError(f"{path} is unreadable ({exc}); the run directory is damaged") from None
        return check_meta(parse_json(text, path), path)

    def update_meta(self, **values: Any) -> None:
        meta = self.meta if self.file(META).is_file() else {}
        meta.update(values)
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_atomic(self.file(META), json.dumps(meta, indent=1) + "\n")

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrites metrics.jsonl and history.csv from the full history (so a resume never duplicates epochs)."""
        write_atomic(self.file(METRICS), "".join(json.dumps(m) + "\n" for m in history))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for m in history:
            w.writerow({k: ("" if m.get(k) is None else m.get(k)) for k in HISTORY_COLUMNS})
        write_atomic(self.file(HISTORY), buf.getvalue())

    def read_history(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        try:
            text = read_text(path, fix=REDO)
        except FileNotFoundError:  # no epoch finished yet (one try, no extra stat)
            return []
        return [check_row(parse_json(line, path, f" line {i + 1}"), path, i + 1, HISTORY_COLUMNS)
                for i, line in enumerate(text.splitlines()) if line.strip()]

    def write_json(self, name: str, data: Any) -> None:
        write_atomic(self.file(name), json.dumps(data, indent=1) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return parse_json(read_text(self.file(name), fix=REDO), self.file(name))
        except FileNotFoundError:
            raise CnnlabError(f"{self.file(name)} not found; has the run finished?") from None

    def remove_temp_files(self) -> list[str]:
        """Removes the temporary files and folders (``.NAME.XXXX.tmp``) a killed writer left in the run and its
        checkpoints; returns their names. Only for the holder of the run's :class:`RunLock`: another
        writer's temporary files are live.
        """
        removed = []
        for folder in (self.path, self.checkpoints):
            for p in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.relative_to(self.path).as_posix())
        return removed

    def weights_path(self) -> Path:
        """Final weights, or the last checkpoint's for a run that did not finish (or, while a training swaps a
        new ``last`` in, the one it replaces)."""
        for path in (self.file(WEIGHTS), *(self.checkpoints / name / WEIGHTS for name in ("last", ".last.old",
                                                                                          "previous"))):
            if regular_file(path, fix=f"put the weights file there, or {REDO}"):
                return path
        meta = self.meta if self.file(META).is_file() else {}
        if meta.get("status") == "failed":
            raise CnnlabError(f"{self.path} failed before its first epoch ended ({meta.get('failure', 'no reason')}); "
                              "it has no weights: fix the cause and train it again")
        raise CnnlabError(f"{self.path} has no weights yet (no {WEIGHTS} or checkpoints/last); train it first")


def check_folder(path: str | os.PathLike, *, overwrite: bool, marker: str, what: str,
                 resumable: bool = False) -> None:
    """Refuses an output folder that holds files, unless ``overwrite`` is on and it holds ``marker`` (a folder
    cnnlab wrote). Changes nothing.

    Raises:
        CnnlabError: the folder holds files and ``overwrite`` is off, or it is not a cnnlab folder.
    """
    p = Path(path).expanduser()
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        if not overwrite:
            more = f", `resume` {p} to continue it," if resumable else ""
            raise CnnlabError(f"{p} already exists; pass `overwrite` to replace it{more} or choose another `out`")
        if not (p / marker).is_file():
            raise CnnlabError(f"{p} exists and is not a cnnlab {what} (no {marker}); refusing to overwrite it — "
                              "choose another `out`")


def prepare_folder(path: str | os.PathLike, *, overwrite: bool, marker: str, what: str,
                   resumable: bool = False, keep: tuple[str, ...] = ()) -> Path:
    """A new, empty output folder (see :func:`check_folder`); an existing empty folder is used as it is.

    Args:
        keep: names left in place when an existing folder is emptied (a lock file its caller holds).

    Raises:
        CnnlabError: as :func:`check_folder`.
    """
    p = Path(path).expanduser()
    check_folder(p, overwrite=overwrite, marker=marker, what=what, resumable=resumable)
    if keep and p.is_dir():
        for child in p.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        return p
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        shutil.rmtree(p)
    if p.is_dir():
        return p
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, no permission, a read-only disk
        raise cannot_write(p, exc) from None
    try:
        p.mkdir()  # exclusive: of two processes creating the same folder, one is told it exists
    except FileExistsError:
        raise CnnlabError(f"{p} was just created by another process; choose another `out`") from None
    except OSError as exc:
        raise cannot_write(p, exc) from None
    return p


class RunLock:
    """One writer per run directory: an exclusive lock on ``RUN/.lock`` holding the owner's pid and host.

    It is an ``fcntl.flock``: the kernel releases it when its process ends, however it ends, so a lock left
    by a killed process is simply taken over. Readers (evaluate, show, report, predict) take no lock: every
    file of a run is replaced atomically, so they always see a whole file.

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock.

        Raises:
            CnnlabError: another process holds it (the message names its pid and host).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            pid, _, host = owner.partition(" ")
            raise CnnlabError(f"{self.path.parent} is being trained by process {pid}"
                              f"{' on ' + host if host else ''}; wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Gives the lock up (the file stays, empty of an owner)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def numbered(base: str | os.PathLike) -> Path:
    """``base``, or ``base-2``, ``base-3``... the first that does not exist yet."""
    path, n = Path(base), 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def safe_name(text: str) -> str:
    """``text`` as a file name: runs of other characters than letters, digits, ``._-`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def default_run_dir(cfg: Config, root: str | os.PathLike = "runs") -> Path:
    """``runs/<config name or model-dataset>``, with ``-2``, ``-3``... so an existing run is never reused."""
    model = cfg.model.name if not cfg.model.layers else (cfg.model.name or "custom")
    return numbered(Path(root) / safe_name(cfg.name or f"{model}-{cfg.data.dataset}"))
