"""datasets inspect from headers: counts, displayed sizes, formats, conversions, bad files, files that are not images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.inspection import inspect_folder

from .test_folder import bad_files, img


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_inspect_folder_from_headers(tmp_path, cache):
    root = tmp_path / "train"
    img(root / "cat.1.jpg", size=(40, 30))
    img(root / "cat.2.jpg", size=(40, 30))
    img(root / "dog.1.png", size=(20, 10), mode="L", color=128)
    img(root / "7.png")
    bad = bad_files(root, "dog")
    info = inspect_folder(root)
    assert info.labels == "filename" and info.counts == {"cat": 2, "dog": 1}
    assert info.sizes == {(40, 30): 2, (20, 10): 1}
    assert info.formats == {"JPEG": 2, "PNG": 1} and info.modes == {"RGB": 2, "L": 1}
    assert info.conversions == {}
    reasons = dict(info.bad)
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert words in reasons[name]
    assert [p for p, _ in info.skipped] == ["7.png"]
    lines = "\n".join(info.to_lines())
    assert "40×30" in lines and "unreadable: 4" in lines
    json.dumps(info.to_dict())
    assert not cache.exists()  # nothing decoded or cached


def test_tiff_and_other_formats_are_inspected_like_training_reads_them(tmp_path, cache):
    root = tmp_path / "scans"
    for i in range(2):
        img(root / "a" / f"{i}.tif", 9, mode="L", size=(16, 12))
    (root / "b").mkdir()
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(root / "b" / "deep.png")
    Image.fromarray(np.zeros((12, 16), np.float32), "F").save(root / "b" / "float.tif")
    img(root / "b" / "ink.jpg", (0, 0, 0, 0), mode="CMYK", size=(16, 12))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 16×12, shown 12×16
    Image.new("RGB", (16, 12)).save(root / "b" / "turned.jpg", exif=exif)
    (root / "b" / "notes.txt").write_text("x")
    info = inspect_folder(root)
    assert info.counts == {"a": 2, "b": 4} and info.formats == {"TIFF": 3, "PNG": 1, "JPEG": 2}
    assert info.sizes == {(16, 12): 5, (12, 16): 1}
    assert info.conversions == {"16-bit grey (I;16) ÷257": 1, "float grey (F) 0..1 ×255, clipped": 1,
                                "CMYK → RGB": 1}
    assert info.not_images == ("b/notes.txt",)
    lines = info.to_lines()
    assert ("converted when decoded: 1 16-bit grey (I;16) ÷257; 1 float grey (F) 0..1 ×255, clipped; 1 CMYK → RGB"
            in lines)
    assert "skipped 1 file that is not an image (Pillow cannot read it): b/notes.txt" in lines
    assert info.to_dict()["not_images"] == ["b/notes.txt"]


def test_a_big_jpeg_is_no_bomb_but_a_big_png_is(tmp_path, monkeypatch):
    root = tmp_path / "d"
    img(root / "cat.1.jpg", size=(400, 300))
    img(root / "dog.1.png", size=(400, 300))
    monkeypatch.setenv("CNNLAB_MAX_PIXELS", "10000")  # 100×100
    info = inspect_folder(root)
    assert info.counts == {"cat": 1}  # decodable at 1/8: 50×38
    why = dict(info.bad)["dog.1.png"]
    assert "400×300 = 120,000 pixels to decode, over the limit of 10,000 pixels" in why and "CNNLAB_MAX_PIXELS" in why
    assert inspect_folder(root, max_pixels=200_000).counts == {"cat": 1, "dog": 1}
