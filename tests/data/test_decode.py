"""Decoding image files: listing, EXIF orientation, odd modes and formats, header probes, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import decode
from cnnlab.errors import CnnlabError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def img(path: Path, color=RED, size=(40, 30), mode="RGB", **save) -> Path:
    """Writes a solid-colour image (size is W×H, PIL order); the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def test_list_images_and_decode_image(tmp_path):
    img(tmp_path / "b.png")
    img(tmp_path / "a.JPG")
    img(tmp_path / "sub" / "c.webp")
    img(tmp_path / ".hidden.png")
    img(tmp_path / ".git" / "d.png")
    (tmp_path / "e.txt").write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in decode.list_images(tmp_path)] == ["a.JPG", "b.png",
                                                                                          "sub/c.webp"]
    assert decode.list_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    with pytest.raises(CnnlabError, match="does not exist"):
        decode.list_images(tmp_path / "missing")
    x = decode.decode_image(tmp_path / "b.png")
    assert x.shape == (3, 30, 40) and x.dtype == torch.uint8 and x[0].min() == 255
    assert decode.decode_image(tmp_path / "b.png", (5, 7), grayscale=True).shape == (1, 5, 7)
    with pytest.raises(CnnlabError, match="e.txt: not an image"):
        decode.decode_image(tmp_path / "e.txt")


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0] = 255  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(arr).save(tmp_path / "r.jpg", quality=95, exif=exif)
    x = decode.decode_image(tmp_path / "r.jpg")
    assert x.shape == (3, 40, 20)  # upright: taller than wide
    assert x[0, :15].float().mean() > 200 and x[0, 25:].float().mean() < 50  # red is now on top
    assert decode.decode_image(tmp_path / "r.jpg", (8, 6)).shape == (3, 8, 6)


def test_odd_modes_and_formats_decode(tmp_path):
    half_clear = Image.new("RGBA", (8, 6), (255, 0, 0, 255))
    half_clear.paste((0, 255, 0, 0), (4, 0, 8, 6))  # right half: green but fully transparent
    half_clear.save(tmp_path / "rgba.png")
    Image.new("P", (8, 6), 3).save(tmp_path / "pal.gif", transparency=3)
    Image.fromarray(np.full((6, 8), 65535, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    img(tmp_path / "cmyk.jpg", (0, 0, 0, 0), mode="CMYK", size=(8, 6))  # no ink: white
    img(tmp_path / "bw.bmp", 1, mode="1", size=(8, 6))
    img(tmp_path / "la.png", (100, 255), mode="LA", size=(8, 6))
    img(tmp_path / "x.webp", BLUE, size=(8, 6), lossless=True)
    for path in decode.list_images(tmp_path):
        for grey in (False, True):
            x = decode.decode_image(path, (3, 4), grayscale=grey)
            assert x.shape == ((1 if grey else 3), 3, 4) and x.dtype == torch.uint8, path.name
    rgba = decode.decode_image(tmp_path / "rgba.png")
    assert rgba[:, :, :4].float().mean(dim=(1, 2)).tolist() == [255, 0, 0]
    assert rgba[:, :, 4:].max() == 0  # transparent pixels become black, not their hidden colour
    assert decode.decode_image(tmp_path / "deep.png").min() == 255  # 16-bit full scale -> 255
    assert decode.decode_image(tmp_path / "cmyk.jpg").float().mean() > 250
    assert decode.decode_image(tmp_path / "bw.bmp").min() == 255
    assert decode.decode_image(tmp_path / "x.webp")[2].min() == 255


def test_probe_reads_headers_and_names_bad_files(tmp_path):
    assert decode.probe(img(tmp_path / "a.png", size=(7, 5))) == ("PNG", (7, 5), "RGB")
    assert decode.probe(img(tmp_path / "b.jpg", mode="L", color=9, size=(4, 3))) == ("JPEG", (4, 3), "L")
    buf = io.BytesIO()
    Image.effect_noise((30, 20), 60).convert("RGB").save(buf, "JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(decode.BadImage, match=r"truncated \(JPEG end marker missing\)"):
        decode.probe(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(decode.BadImage, match="empty"):
        decode.probe(tmp_path / "empty.png")


def test_crop_keeps_the_centre_and_unknown_modes_are_refused(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, 10:20] = 255  # white middle third
    Image.fromarray(arr).save(tmp_path / "wide.png")
    crop = decode.decode_image(tmp_path / "wide.png", (10, 10), resize="crop")
    assert crop.shape == (3, 10, 10) and crop.min() == 255
    squash = decode.decode_image(tmp_path / "wide.png", (10, 10))
    assert squash[:, :, 0].max() == 0 and squash[:, :, 5].min() == 255  # all three thirds, squeezed
    with pytest.raises(CnnlabError, match="unknown resize mode 'stretch'; valid: squash, crop"):
        decode.decode_image(tmp_path / "wide.png", (10, 10), resize="stretch")
    with pytest.raises(CnnlabError, match="is not an image file .extension .txt."):
        (tmp_path / "notes.txt").write_text("x")
        decode.list_images(tmp_path / "notes.txt")
