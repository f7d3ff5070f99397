"""Decoding many files into one uint8 file: rows in order, failures by row, compaction, the cache folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import cache


def test_decode_files_fills_rows_and_names_failures(tmp_path):
    files = []
    for i, value in enumerate((10, 20, 30)):
        files.append(tmp_path / f"{i}.png")
        Image.new("L", (6, 4), value).save(files[-1])
    (tmp_path / "bad.png").write_text("not a png")
    paths = [str(files[0]), str(tmp_path / "bad.png"), str(files[1]), str(files[2])]
    out = tmp_path / "rows.u8"
    out.write_bytes(bytes(4 * 1 * 2 * 3))
    failed = cache.decode_files(str(out), paths, (2, 3), True, "squash", workers=1, progress=False, limit=10**8)
    assert list(failed) == [1] and "not an image" in failed[1]
    rows = np.fromfile(out, np.uint8).reshape(4, 1, 2, 3)
    assert [int(rows[i].max()) for i in (0, 2, 3)] == [10, 20, 30] and rows[1].max() == 0
    cache.compact_rows(out, np.array([0, 2, 3]), (4, 1, 2, 3))
    assert np.fromfile(out, np.uint8).reshape(3, 6).max(axis=1).tolist() == [10, 20, 30]


def test_a_cache_folder_gets_the_umask_permissions(tmp_path):
    for name, value in (("a.png", 0), ("b.png", 255)):
        Image.new("RGB", (5, 5), (value, value, value)).save(tmp_path / name)
    old = os.umask(0o027)
    try:
        meta = cache.build_cache(tmp_path / "cache" / "c", tmp_path, [("a.png", "x"), ("b.png", "y")], (3, 3), False,
                                 "squash", workers=1, progress=False, limit=10**8)
    finally:
        os.umask(old)
    assert meta["count"] == 2 and meta["classes"] == ["x", "y"]
    folder = tmp_path / "cache" / "c"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f.name
    assert cache.read_cache_meta(folder)["files"] == ["a.png", "b.png"]
    images, labels = cache.open_cache(folder, meta)
    assert images.shape == (2, 3, 3, 3) and labels.tolist() == [0, 1] and int(images[1].min()) == 255


def test_a_missing_folder_is_no_cache(tmp_path: Path):
    assert cache.read_cache_meta(tmp_path / "nothing") is None
