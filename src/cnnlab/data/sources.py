"""Where data and weight files come from: data dirs, the cache, verified atomic downloads.

Resolution order for a dataset's files: ``--data-dir``, ``$CNNLAB_DATA``, the cache
(``$CNNLAB_CACHE`` or ``~/.cache/cnnlab``), then a download from the official URLs into the cache.
A data dir holds ``<dir>/<dataset name>/<official file names>``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError

CHUNK = 1 << 20  # bytes per read while hashing / downloading


def cache_dir() -> Path:
    """The cache root: ``$CNNLAB_CACHE``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``."""
    if env := os.environ.get("CNNLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "cnnlab"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Candidate data roots in resolution order (the cache last; it is also where downloads go)."""
    roots = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if env := os.environ.get("CNNLAB_DATA"):
        roots.append(Path(env).expanduser())
    roots.append(cache_dir() / "datasets")
    return roots


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, mirrors and published checksum(s)."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, spec: RemoteFile) -> None:
    """Raises a one-line :class:`CnnlabError` if ``path`` does not match the published size/checksum."""
    if spec.size is not None and path.stat().st_size != spec.size:
        raise CnnlabError(f"{path}: {path.stat().st_size} bytes, expected {spec.size} (truncated or wrong file); "
                          "delete it and fetch it again")
    for algo in ("sha256", "md5"):
        want = getattr(spec, algo)
        if want and not (got := file_digest(path, algo)).startswith(want):
            raise CnnlabError(f"{path}: {algo} {got[:16]}… does not match the published {want[:16]}…; "
                              "the file is corrupt or not the official one — delete it and fetch it again")


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 15.0,
    progress: bool = True,
) -> Path:
    """Downloads the first URL that works to ``dest`` atomically and verifies it.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only after the checksum
    matches, so an interrupted or corrupt download never leaves a file that looks valid.

    Args:
        urls: mirrors, tried in order.
        dest: final path.
        sha256: expected hex digest (a prefix is enough, as in torchvision's weight file names).
        md5: expected hex digest, checked when given.
        timeout: seconds to wait for a connection / each read.
        progress: show a progress bar on a terminal.

    Raises:
        CnnlabError: no mirror served a verified file (the message lists why each failed).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    spec = RemoteFile(dest.name, tuple(urls), sha256, md5)
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp_path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                _copy_with_progress(resp, out, total, f"downloading {dest.name}", progress)
            if total and tmp_path.stat().st_size != total:
                raise CnnlabError(f"{url}: got {tmp_path.stat().st_size} of {total} bytes (truncated)")
            check_file(tmp_path, spec)
            os.replace(tmp_path, dest)
            return dest
        except (urllib.error.URLError, OSError, CnnlabError, ValueError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
        finally:
            tmp_path.unlink(missing_ok=True)
    raise CnnlabError(f"could not download {dest.name} (" + "; ".join(failures) + ")")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return str(exc)


def _copy_with_progress(src, dst, total: int, label: str, progress: bool) -> None:
    bar = None
    if progress and total and _is_tty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), transient=True)
        bar.start()
        task = bar.add_task(label, total=total)
    try:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            if bar is not None:
                bar.advance(task, len(chunk))
    finally:
        if bar is not None:
            bar.stop()


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
