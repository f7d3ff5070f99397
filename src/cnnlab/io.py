"""Files, the one way: atomic writes honouring the umask, folder swaps, the cache, digests, verified downloads.

Every file cnnlab writes goes through :func:`atomic_path` (or :func:`write_atomic` /
:func:`write_bytes_atomic` on top of it): the bytes go to a unique temporary name beside the target, are
flushed to disk, get the permissions a plain ``open(path, "w")`` would give (``0o666 & ~umask``) and are
renamed into place, so a reader never sees half a file and a crash never leaves one. Folders that must
change as a whole (checkpoints) are swapped with :func:`replace_folder`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.files import regular_file

CHUNK = 1 << 20  # bytes per read while hashing / downloading


def shell_word(path: str | os.PathLike) -> str:
    """A path as one word of a command line that a user can copy and run (quoted when it holds spaces,
    quotes or other shell characters: ``'runs/my run'``; a plain path stays as it is)."""
    return shlex.quote(str(path))


# ----------------------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``/proc/self/status``).

    ``os.umask`` can only be read by setting it, which would briefly change it for every thread.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file (``mkstemp`` would give 0o600)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """``0o777 & ~umask``: the mode ``mkdir`` gives a new folder (``mkdtemp`` would give 0o700)."""
    return 0o777 & ~current_umask()


# --------------------------------------------------------------------------------------- atomic writes


def make_parents(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``, returning the folders it created, outermost first (for :func:`remove_if_empty`)."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made = []
    for f in reversed(missing):
        try:
            f.mkdir()
        except FileExistsError:  # another process made it meanwhile: not ours to remove
            continue
        except OSError:  # permission denied, a read-only disk: leave no folder of ours half-way
            remove_if_empty(made)
            raise
        made.append(f)
    return made


def cannot_write(path: Path, exc: OSError) -> CnnlabError:
    """The one-line error for ``path`` that cannot be created: a file where a folder is needed, no
    permission, a read-only or pseudo file system (``exc`` is the OSError of the mkdir / mkstemp)."""
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return CnnlabError(f"cannot write {path}: {blocked} is a file, not a folder; give another path")
    reason = (exc.strerror or type(exc).__name__).lower()
    return CnnlabError(f"cannot write {path}: {reason} in {path.parent}; give a path in a folder you can write")


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Removes ``folders`` (outermost first, as :func:`make_parents` returns them) that are still empty."""
    for f in reversed(folders):
        try:
            f.rmdir()
        except OSError:  # not empty (someone else wrote there) or already gone: leave it and its parents
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", name: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block succeeds, it becomes ``path`` atomically.

    ``name`` is the file name the writer would choose (``metrics.csv``): when ``path`` is a folder the
    error suggests ``path/name``; without it, it asks for a file name in the folder (repeating the
    folder's own name, ``DIR/DIR``, would be no advice).

    Use it for writers that take a file name (safetensors, ONNX, matplotlib). The file is fsynced and
    given the umask's permissions before the rename; on an exception it is removed, ``path`` is left as
    it was, and so are the folders above it: those this call created are removed again.

    Raises:
        CnnlabError: ``path`` is a folder, a folder above it is a file, it cannot be created there (permission,
            a read-only disk), or the disk is full.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        hint = f"give a file name, e.g. {path / name}" if name else "give the name of a file in it"
        raise CnnlabError(f"cannot write {path}: it is a folder; {hint}")
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise CnnlabError(f"cannot write {path}: {blocked} is a file, not a folder; give another path")
    made: list[Path] = []
    try:  # the folders and the temporary file: failing here is about the place, not the writer
        made = make_parents(path.parent)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as exc:
        remove_if_empty(made)
        raise (_no_space(path) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else cannot_write(path, exc)) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        remove_if_empty(made)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _no_space(path: Path) -> CnnlabError:
    kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
    return CnnlabError(f"no space left on the disk of {path.parent} while writing {path.name}; {kept}; "
                       "free some space and run the command again")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, name: str | None = None) -> Path:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_path`, and its ``name``); returns the path."""
    with atomic_path(path, name=name) as tmp:
        tmp.write_bytes(data)
    return Path(path).expanduser()


def write_atomic(path: str | os.PathLike, text: str, *, name: str | None = None) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`, and its ``name``); returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), name=name)


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p`` that returns the path (folders get ``0o777 & ~umask`` like any mkdir).

    Raises:
        CnnlabError: a file stands where a folder is needed, or the folder cannot be created.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CnnlabError(f"cannot create the folder {path}: a file of that name is in the way") from None
    except NotADirectoryError:
        raise CnnlabError(f"cannot create the folder {path}: part of its path is a file") from None
    except PermissionError:
        raise CnnlabError(f"cannot create the folder {path}: permission denied") from None
    return path


def temp_folder_beside(path: str | os.PathLike) -> Path:
    """A new empty hidden folder next to ``path`` with the umask's permissions (for :func:`replace_folder`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.chmod(tmp, folder_mode())
    return tmp


def replace_folder(tmp: Path, folder: Path, *, keep: Path | None = None) -> Path:
    """Swaps the finished folder ``tmp`` in as ``folder``: fsyncs its files, then two renames.

    The folder it replaces becomes ``keep`` (an older ``keep`` is dropped), or ``.NAME.old`` until the swap is
    done. The files are made durable before anything is renamed, so ``folder`` is missing only between the
    two renames (a reader that finds it missing looks again). A crash between them leaves only ``.NAME.old``,
    which :func:`recover_folder` puts back, or only ``keep``.
    """
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, file_mode())
    old = keep if keep is not None else folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if keep is None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def recover_folder(folder: Path) -> Path:
    """Undoes a crash between :func:`replace_folder`'s two renames: only ``.NAME.old`` is left, so use it."""
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.exists():
        os.replace(old, folder)
    return folder


# ------------------------------------------------------------------------------------------ the cache


def cache_dir() -> Path:
    """The cache root: ``$CNNLAB_CACHE``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``."""
    if env := os.environ.get("CNNLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "cnnlab"


# ------------------------------------------------------------------------------------------ checksums


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, mirrors and published checksum(s)."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, spec: RemoteFile) -> None:
    """Raises a one-line :class:`CnnlabError` if ``path`` does not match the published size/checksum (or is
    no regular file: hashing a FIFO would wait forever)."""
    regular_file(path, fix="delete it and fetch it again")
    if spec.size is not None and path.stat().st_size != spec.size:
        raise CnnlabError(f"{path}: {path.stat().st_size} bytes, expected {spec.size} (truncated or wrong file); "
                          "delete it and fetch it again")
    for algo in ("sha256", "md5"):
        want = getattr(spec, algo)
        if want and not (got := file_digest(path, algo)).startswith(want):
            raise CnnlabError(f"{path}: {algo} {got[:16]}… does not match the published {want[:16]}…; "
                              "the file is corrupt or not the official one — delete it and fetch it again")


# ------------------------------------------------------------------------------------------- downloads


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
    spec = RemoteFile(dest.name, tuple(urls), sha256, md5)
    failures = []
    for url in urls:
        try:
            with atomic_path(dest, suffix=".part") as tmp:
                with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or 0)
                    _copy_with_progress(resp, out, total, f"downloading {dest.name}", progress)
                if total and tmp.stat().st_size != total:
                    raise CnnlabError(f"{url}: got {tmp.stat().st_size} of {total} bytes (truncated)")
                check_file(tmp, spec)
            return dest
        except (urllib.error.URLError, OSError, CnnlabError, ValueError) as exc:
            failures.append(f"{url}: {_reason(exc)}")
    raise CnnlabError(f"could not download {dest.name} (" + "; ".join(failures) + ")")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return str(exc)


def _copy_with_progress(src, dst, total: int, label: str, progress: bool) -> None:
    bar = None
    if progress and total and sys.stderr.isatty():
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
