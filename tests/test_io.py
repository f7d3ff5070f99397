"""Files, the one way: atomic writes with the umask's permissions, folder swaps, the cache, digests, and
verified downloads from a local HTTP server (127.0.0.1) serving generated files."""

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.io import (
    RemoteFile,
    atomic_path,
    cache_dir,
    check_file,
    current_umask,
    download_file,
    file_digest,
    file_mode,
    folder_mode,
    make_folder,
    recover_folder,
    replace_folder,
    shell_word,
    temp_folder_beside,
    write_atomic,
    write_bytes_atomic,
)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def umask_027():
    """The process umask set to 0o027 for one test (and put back)."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------------------------------- atomic writes


def test_atomic_path_on_an_exception_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("half of the new")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_on_an_exception_removes_the_folders_it_made(tmp_path, umask_027):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "kept" / "new" / "deeper" / "f.onnx") as tmp:
        assert mode(tmp.parent) == 0o750 and mode(tmp.parent.parent) == 0o750  # made with the umask's mode
        raise RuntimeError("parity check failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())
    # a folder someone else wrote into meanwhile stays, with what they wrote
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a" / "b" / "f.txt") as tmp:
        (tmp_path / "a" / "theirs.txt").write_text("x")
        raise RuntimeError
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["theirs.txt"]


def test_a_folder_or_a_file_in_the_way_is_a_one_line_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(CnnlabError, match=r"cannot write .*out: it is a folder; give the name of a file in it$"):
        write_atomic(tmp_path / "out", "data")  # no made-up name (was out/out, the folder's own name again)
    with pytest.raises(CnnlabError, match=r"cannot write .*out: it is a folder; give a file name, e.g. .*out/t.csv$"):
        write_atomic(tmp_path / "out", "data", name="t.csv")
    with pytest.raises(CnnlabError, match=r"give a file name, e.g. .*out/t.bin$"), atomic_path(tmp_path / "out", name="t.bin"):
        pass
    with pytest.raises(CnnlabError, match=r"cannot write .*plain.txt/sub/a.png: .*plain.txt is a file, not a folder"):
        write_atomic(tmp_path / "plain.txt" / "sub" / "a.png", "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "plain.txt"] and not any((tmp_path / "out").iterdir())


def test_atomic_path_replaces_the_file_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # missing folders are made
    with atomic_path(target, suffix=".part") as tmp:
        assert tmp.suffix == ".part" and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == ["out.bin"]
    assert write_atomic(target, "héllo") == target and target.read_bytes() == "héllo".encode()
    assert write_bytes_atomic(target, b"\x00\x01") == target and target.read_bytes() == b"\x00\x01"


def test_written_files_get_the_umasks_permissions(tmp_path, umask_027):
    assert current_umask() == 0o027
    assert (file_mode(), folder_mode()) == (0o640, 0o750)  # 0o666 & ~umask, 0o777 & ~umask
    write_atomic(tmp_path / "a.txt", "x")
    write_bytes_atomic(tmp_path / "b.bin", b"x")
    with atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"x")
    assert [mode(tmp_path / n) for n in ("a.txt", "b.bin", "c.bin")] == [0o640] * 3  # not mkstemp's 0o600
    assert mode(temp_folder_beside(tmp_path / "ck")) == 0o750  # not mkdtemp's 0o700
    assert mode(make_folder(tmp_path / "x" / "y")) == 0o750


def test_umask_022_gives_world_readable_files(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        assert mode(tmp_path / "a.txt") == 0o644 and current_umask() == 0o022
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------ folder swaps


def test_replace_folder_swaps_in_the_new_contents(tmp_path, umask_027):
    folder = tmp_path / "last"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    tmp = temp_folder_beside(folder)
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.") and list(tmp.iterdir()) == []
    (tmp / "new.txt").write_text("new")
    os.chmod(tmp / "new.txt", 0o600)
    assert replace_folder(tmp, folder) == folder
    assert [p.name for p in folder.iterdir()] == ["new.txt"] and mode(folder / "new.txt") == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # neither the temp folder nor .last.old is left
    first = temp_folder_beside(tmp_path / "fresh")
    (first / "f").write_text("1")
    replace_folder(first, tmp_path / "fresh")  # no folder before: a plain rename
    assert (tmp_path / "fresh" / "f").read_text() == "1"
    for n in (2, 3):  # keep: the replaced folder becomes `keep`, the older `keep` is dropped
        nxt = temp_folder_beside(tmp_path / "fresh")
        (nxt / "f").write_text(str(n))
        replace_folder(nxt, tmp_path / "fresh", keep=tmp_path / "kept")
    assert (tmp_path / "fresh" / "f").read_text() == "3" and (tmp_path / "kept" / "f").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "kept", "last"]


def test_recover_folder_puts_back_the_old_folder_after_a_crash(tmp_path):
    folder = tmp_path / "last"
    old = tmp_path / ".last.old"
    old.mkdir()
    (old / "state.json").write_text("{}")  # a crash between replace_folder's two renames leaves only this
    assert recover_folder(folder) == folder
    assert (folder / "state.json").read_text() == "{}" and not old.exists()
    old.mkdir()
    (old / "stale").write_text("")
    recover_folder(folder)  # the folder exists: the leftover is not used
    assert [p.name for p in folder.iterdir()] == ["state.json"]


# ------------------------------------------------------------------------------------ cache and digests


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CNNLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "cnnlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "cnnlab"


def test_file_digest_of_known_bytes(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert file_digest(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert file_digest(tmp_path / "abc", "md5") == "900150983cd24fb0d6963f7d28e17f72"


def test_check_file_names_the_file(tmp_path):
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(b"abc")
    with pytest.raises(CnnlabError, match="train-images-idx3-ubyte.gz: 3 bytes, expected 4"):
        check_file(f, RemoteFile(f.name, (), None, None, 4))
    with pytest.raises(CnnlabError, match=r"train-images-idx3-ubyte.gz: md5 .* does not match the published"):
        check_file(f, RemoteFile(f.name, (), None, "0" * 32))
    check_file(f, RemoteFile(f.name, (), sha(b"abc")[:8], "900150983cd24fb0d6963f7d28e17f72", 3))  # prefixes do


# ------------------------------------------------------------------------------------------- downloads


def test_good_file_downloads_and_verifies(file_server, tmp_path):
    url, h = file_server
    h.files["/a.bin"] = b"x" * 5000
    dest = download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"x" * 5000), progress=False)
    assert dest.read_bytes() == b"x" * 5000
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temp files left


def test_wrong_checksum_is_an_error_and_leaves_nothing(file_server, tmp_path):
    url, h = file_server
    h.files["/a.bin"] = b"tampered"
    with pytest.raises(CnnlabError, match="could not download a.bin.*sha256 .* does not match"):
        download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"original"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_rejected(file_server, tmp_path):
    url, h = file_server
    h.files["/a.bin"] = b"y" * 10000
    h.truncate.add("/a.bin")
    with pytest.raises(CnnlabError, match="could not download a.bin"):
        download_file([url + "/a.bin"], tmp_path / "a.bin", sha256=sha(b"y" * 10000), timeout=5, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_falls_through_to_the_next_mirror(file_server, tmp_path):
    url, h = file_server
    h.files["/mirror2/a.bin"] = b"ok"
    dest = download_file([url + "/missing/a.bin", url + "/mirror2/a.bin"], tmp_path / "a.bin", sha256=sha(b"ok"),
                         progress=False)
    assert dest.read_bytes() == b"ok"
    with pytest.raises(CnnlabError, match="HTTP 404"):
        download_file([url + "/missing/a.bin"], tmp_path / "b.bin", sha256=sha(b"ok"), progress=False)


def test_paths_expand_home_and_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    from cnnlab.errors import CnnlabError
    from cnnlab.io import write_atomic

    monkeypatch.setenv("HOME", str(tmp_path))
    assert write_atomic("~/out/a.txt", "hi") == tmp_path / "out" / "a.txt"
    assert (tmp_path / "out" / "a.txt").read_text() == "hi" and not (tmp_path / "~").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CnnlabError, match=r"cannot write .*/file/b.png: .*/file is a file, not a folder"):
        write_atomic(tmp_path / "file" / "b.png", "x")  # a figure folder named like an existing file
    with pytest.raises(CnnlabError, match="it is a folder; give the name of a file in it"):
        write_atomic(tmp_path / "out", "x")  # a CSV named like an existing folder


def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.jsonl"
    write_atomic(target, "old\n")
    with pytest.raises(CnnlabError) as err, atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # what write() raises on a full disk
    assert str(err.value) == (f"no space left on the disk of {tmp_path} while writing metrics.jsonl; the previous "
                              "metrics.jsonl is intact; free some space and run the command again")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    with pytest.raises(CnnlabError, match="while writing new.bin; nothing was written;"), \
            atomic_path(tmp_path / "new.bin"):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_shell_word_quotes_only_paths_a_shell_would_split():
    assert shell_word("runs/fashion_mnist_cnn") == "runs/fashion_mnist_cnn"
    assert shell_word(Path("/tmp/my runs/ü")) == "'/tmp/my runs/ü'"
    assert shell_word("it's") == "'it'\"'\"'s'"
    assert shell_word("~/runs") == "'~/runs'"  # a real folder named ~ is not the home folder


def test_a_place_that_cannot_be_written_is_a_one_line_error_and_leaves_no_folder(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(CnnlabError, match=r"^cannot write .*/new/sub/a.csv: permission denied in .*/new/sub; give a "
                                          r"path in a folder you can write$"):
        write_atomic(tmp_path / "new" / "sub" / "a.csv", "x")
    assert not (tmp_path / "new").exists()  # the folders made for it are gone again
    monkeypatch.setattr("tempfile.mkdtemp", denied)
    with pytest.raises(CnnlabError, match=r"^cannot write .*/tb: permission denied in "):
        temp_folder_beside(tmp_path / "tb")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CnnlabError, match=r"^cannot write .*plain/tb: .*plain is a file, not a folder"):
        temp_folder_beside(tmp_path / "plain" / "tb")


def test_check_file_refuses_a_fifo_before_hashing_it(tmp_path):
    os.mkfifo(tmp_path / "train.gz")  # hashing it would wait for a writer forever
    with pytest.raises(CnnlabError, match="train.gz is a FIFO, not a file; delete it and fetch it again"):
        check_file(tmp_path / "train.gz", RemoteFile("train.gz", (), sha256="ab"))
