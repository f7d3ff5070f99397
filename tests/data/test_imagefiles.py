"""What counts as an image: every format Pillow decodes, by content; the rest counted and named in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import imagefiles
from cnnlab.errors import CnnlabError


def img(path: Path, mode="RGB", size=(8, 6), color=(255, 0, 0), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def test_every_pillow_format_counts_by_extension_or_content(tmp_path):
    img(tmp_path / "a.tif")
    img(tmp_path / "b.TIFF")
    img(tmp_path / "c.ppm")
    img(tmp_path / "d.tga")
    img(tmp_path / "e.png")
    img(tmp_path / "photo", fmt="PNG")  # no extension: decided by content
    img(tmp_path / "scan.dat", fmt="TIFF")  # a foreign extension: decided by content
    (tmp_path / "notes.txt").write_text("not pixels")
    (tmp_path / "labels.csv").write_text("file,label\n")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    (tmp_path / "empty").write_bytes(b"")
    img(tmp_path / ".hidden.png")  # hidden: neither listed nor counted
    found = imagefiles.find_images(tmp_path)
    assert [p.name for p in found.files] == ["a.tif", "b.TIFF", "c.ppm", "d.tga", "e.png", "photo", "scan.dat"]
    assert found.not_images == ["clip.mp4", "empty", "labels.csv", "notes.txt"]
    assert found.not_images_line() == ("skipped 4 files that are not images (Pillow cannot read them): clip.mp4, "
                                       "empty, labels.csv, notes.txt")
    assert imagefiles.list_images(tmp_path) == found.files


def test_one_line_names_at_most_five_and_counts_the_rest():
    names = [f"f{i}.txt" for i in range(8)]
    assert imagefiles.not_images_line(names, "photos") == (
        "skipped 8 files in photos that are not images (Pillow cannot read them): f0.txt, f1.txt, f2.txt, f3.txt, "
        "f4.txt and 3 more")
    assert imagefiles.not_images_line(["a.txt"]) == "skipped 1 file that is not an image (Pillow cannot read it): a.txt"
    assert imagefiles.not_images_line([]) is None


def test_sniff_reads_content_and_refuses_identify_only_formats(tmp_path):
    assert imagefiles.sniff(img(tmp_path / "x.bin", fmt="BMP")) == "BMP"
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))  # Pillow has only a stub for HDF5
    assert imagefiles.sniff(tmp_path / "model.h5") is None
    assert not imagefiles.is_image(tmp_path / "model.h5")
    exts = imagefiles.image_extensions()
    assert {".tif", ".tiff", ".png", ".jpg", ".webp", ".pgm", ".tga", ".psd"} <= exts
    assert not {".h5", ".grib", ".mpg", ".pdf"} & exts


def test_a_single_file_is_judged_by_content(tmp_path):
    tif = img(tmp_path / "one.tif", mode="I;16", color=0)
    assert imagefiles.list_images(tif) == [tif]
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "noext", format="PNG")
    assert imagefiles.list_images(tmp_path / "noext") == [tmp_path / "noext"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CnnlabError, match="notes.txt is not an image file Pillow can read"):
        imagefiles.list_images(tmp_path / "notes.txt")
    with pytest.raises(CnnlabError, match="does not exist"):
        imagefiles.find_images(tmp_path / "missing")
