"""Reading files a user or a run hands cnnlab: regular files only, and what else is there named in one line."""

import os
import threading

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.files import read_bytes, read_text, regular_file, what_is


def test_a_regular_file_is_read_and_a_missing_one_is_the_callers_business(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"caf\xc3\xa9")
    assert regular_file(tmp_path / "a.txt") is True
    assert read_bytes(tmp_path / "a.txt") == b"caf\xc3\xa9" and read_text(tmp_path / "a.txt") == "café"
    os.symlink("a.txt", tmp_path / "link")  # a link to a file is that file
    assert regular_file(tmp_path / "link") is True and read_text(tmp_path / "link") == "café"
    assert regular_file(tmp_path / "missing") is False
    assert regular_file(tmp_path / "a.txt" / "below") is False  # ENOTDIR: nothing can be there
    with pytest.raises(FileNotFoundError):
        read_bytes(tmp_path / "missing")


@pytest.mark.parametrize("make, said", [
    (os.mkfifo, "is a FIFO, not a file"),
    (os.mkdir, "is a directory, not a file"),
    (lambda p: os.symlink(p.name, p), "is a symbolic link that loops"),
    (lambda p: os.symlink("/nonexistent/x", p), "is a symbolic link to /nonexistent/x, which does not exist"),
])
def test_what_stands_there_instead_is_named_with_the_fix(tmp_path, make, said):
    path = tmp_path / "x"
    make(path)
    for read in (regular_file, read_bytes, read_text):
        with pytest.raises(CnnlabError, match=f"^{path} {said}; fetch it again$"):
            read(path, fix="fetch it again")


def test_reading_a_fifo_never_waits_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(CnnlabError, read_bytes, tmp_path / "fifo")),
                         daemon=True)
    t.start()
    t.join(20)  # generous: only a blocked open would take long (it would take forever)
    assert done, "read_bytes blocked on a FIFO"


def test_a_device_and_bad_text_are_refused(tmp_path):
    with pytest.raises(CnnlabError, match="^/dev/null is a character device, not a file; put the file"):
        read_bytes("/dev/null")
    (tmp_path / "b").write_bytes(b"ok\xff")
    with pytest.raises(CnnlabError, match=r"b is not UTF-8 text \(byte 2\)"):
        read_text(tmp_path / "b")


def test_what_is_names_each_kind_for_readers_that_go_on(tmp_path):
    (tmp_path / "f").write_text("x")
    os.mkfifo(tmp_path / "p")
    os.symlink("l", tmp_path / "l")
    assert what_is(tmp_path / "f") is None
    assert [what_is(tmp_path / n) for n in ("p", ".", "l", "none")] == [
        "a FIFO, not a file", "a directory, not a file", "a symbolic link that loops", "no such file"]
