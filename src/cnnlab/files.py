"""Reading the files a user or a run directory hands cnnlab: regular files only, one-line errors otherwise.

Reading a FIFO by name blocks forever, a folder or a looping link would be reported as a missing file, and a
device may never end. Every reader checks what is at the path first: :func:`regular_file` before a library
opens a file by name (safetensors, ONNX Runtime, Pillow), :func:`read_bytes` / :func:`read_text` to read one
(opened non-blocking and checked with ``fstat``, so nothing swapped in after a check can hang the reader).
Writing is :mod:`cnnlab.io`'s.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cnnlab.errors import CnnlabError

MISSING = "no such file"
FIX = "put the file itself there"  # the default advice; callers name a better one where they know it

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words: ``"a FIFO"``, ``"a directory"``..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _not_a_file(path: Path, mode: int, fix: str) -> CnnlabError:
    return CnnlabError(f"{path} is {kind(mode)}, not a file; {fix}")


def _os_reason(path: Path, exc: OSError) -> str:
    """What a failed ``stat``/``open`` of ``path`` says is there, in words (:data:`MISSING` for nothing)."""
    if exc.errno == errno.ELOOP:
        return "a symbolic link that loops"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return MISSING
    return f"unreadable ({(exc.strerror or type(exc).__name__).lower()})"


def _failed(path: Path, exc: OSError, fix: str) -> CnnlabError | None:
    """The one-line error for a ``stat``/``open`` of ``path`` that failed; None when nothing is there."""
    reason = _os_reason(path, exc)
    return None if reason == MISSING else CnnlabError(f"{path} is {reason}; {fix}")


def what_is(path: str | os.PathLike) -> str | None:
    """None for a regular file at ``path`` (links followed), else what is there in words: :data:`MISSING`,
    ``"a FIFO, not a file"``, ``"a directory, not a file"``, ``"a symbolic link that loops"``... For readers
    that report a bad file and go on (predict's list of images, a folder dataset's listing)."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        return _os_reason(p, exc)
    return None if stat.S_ISREG(mode) else f"{kind(mode)}, not a file"


def regular_file(path: str | os.PathLike, *, fix: str = FIX) -> bool:
    """Whether a regular file is at ``path`` (links followed): True; False when nothing is there.

    Args:
        path: the file.
        fix: what the user should do, the end of the error.

    Raises:
        CnnlabError: something else is there (a directory, a FIFO, a device, a link that loops or leads
            nowhere) or it cannot be read (no permission); the message says which.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        if (err := _failed(p, exc, fix)) is None:
            return False
        raise err from None
    if not stat.S_ISREG(mode):
        raise _not_a_file(p, mode, fix)
    return True


def read_bytes(path: str | os.PathLike, *, fix: str = FIX, at_most: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (only its first ``at_most`` when given); never blocks on a FIFO.

    Raises:
        FileNotFoundError: nothing is at ``path`` (its caller knows what a missing file means).
        CnnlabError: as :func:`regular_file`, or reading fails (an I/O error).
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once instead of waiting
    except OSError as exc:
        if (err := _failed(p, exc, fix)) is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(p)) from None
        raise err from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_a_file(p, mode, fix)
    with open(fd, "rb") as f:
        try:
            return f.read(-1 if at_most is None else at_most)
        except OSError as exc:
            raise CnnlabError(f"{p} cannot be read ({(exc.strerror or str(exc)).lower()}); {fix}") from None


def read_text(path: str | os.PathLike, *, fix: str = FIX) -> str:
    """:func:`read_bytes` decoded as UTF-8.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        CnnlabError: as :func:`read_bytes`, or the bytes are not UTF-8.
    """
    try:
        return read_bytes(path, fix=fix).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CnnlabError(f"{path} is not UTF-8 text (byte {exc.start}); {fix}") from None
