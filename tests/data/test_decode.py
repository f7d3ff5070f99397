"""Decoding image files: EXIF orientation, odd modes and formats, bit depths, big photos and bombs, header probes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import decode
from cnnlab.data.imagefiles import list_images
from cnnlab.errors import CnnlabError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def img(path: Path, color=RED, size=(40, 30), mode="RGB", **save) -> Path:
    """Writes a solid-colour image (size is W×H, PIL order); the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def test_decode_image(tmp_path):
    img(tmp_path / "b.png")
    (tmp_path / "e.txt").write_text("x")
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
    assert decode.probe(tmp_path / "r.jpg").size == (20, 40)  # displayed (W, H), not the stored 40×20
    Image.fromarray(arr).save(tmp_path / "r.tif", exif=exif)  # TIFF carries the same tag
    tif = decode.decode_image(tmp_path / "r.tif")
    assert tif.shape == (3, 40, 20) and tif[0, :15].float().mean() > 200 and tif[0, 25:].float().mean() < 50
    assert decode.decode_image(tmp_path / "r.tif", (8, 6), resize="crop")[0, :3].float().mean() > 200
    assert decode.probe(tmp_path / "r.tif").size == (20, 40)


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
    for path in list_images(tmp_path):
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
    assert decode.probe(img(tmp_path / "a.png", size=(7, 5))) == ("PNG", (7, 5), "RGB", None)
    assert decode.probe(img(tmp_path / "b.jpg", mode="L", color=9, size=(4, 3))) == ("JPEG", (4, 3), "L", None)
    assert decode.probe(img(tmp_path / "c.jpg", mode="CMYK", color=(0, 0, 0, 0), size=(4, 3))).conversion == \
        "CMYK → RGB"
    buf = io.BytesIO()
    Image.effect_noise((30, 20), 60).convert("RGB").save(buf, "JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(decode.BadImage, match=r"truncated \(JPEG end marker missing\)"):
        decode.probe(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(decode.BadImage, match="empty"):
        decode.probe(tmp_path / "empty.png")
    os.mkfifo(tmp_path / "fifo.png")  # its size reads 0: it was called empty; and opening it would block
    with pytest.raises(decode.BadImage, match="^a FIFO, not a file$"):
        decode.probe(tmp_path / "fifo.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(CnnlabError, match="dir.png: a directory, not a file; replace or remove the file"):
        decode.decode_image(tmp_path / "dir.png", (4, 4))


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


# ----------------------------------------------------------------------------------------------- bit depth


def grey(x: torch.Tensor) -> list[int]:
    return x[0].flatten().tolist()


def test_16_bit_is_scaled_by_bit_depth_in_every_image(tmp_path):
    ramp = np.arange(256, dtype=np.uint16).reshape(16, 16) * 257  # 257·k for k = 0..255
    Image.fromarray(ramp).save(tmp_path / "ramp.png")  # mode I;16
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"
    assert grey(decode.decode_image(tmp_path / "ramp.png")) == list(range(256))
    # the pair: one pixel one level apart across 255 must not switch the whole image's scale
    dim = np.full((4, 4), 200, np.uint16)
    dim[0, 0] = 255
    brighter = dim.copy()
    brighter[0, 0] = 256
    Image.fromarray(dim).save(tmp_path / "dim.png")
    Image.fromarray(brighter).save(tmp_path / "brighter.png")
    a, b = decode.decode_image(tmp_path / "dim.png"), decode.decode_image(tmp_path / "brighter.png")
    assert grey(a) == grey(b) == [1] * 16  # 200/257 and 255/257 and 256/257 all round to 1
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")  # 16-bit TIFF: the same rule
    assert grey(decode.decode_image(tmp_path / "ramp.tif")) == list(range(256))
    Image.fromarray(ramp).save(tmp_path / "ramp.pgm")  # 16-bit PGM: Pillow reads mode I, 16 bits
    assert Image.open(tmp_path / "ramp.pgm").mode == "I"
    assert grey(decode.decode_image(tmp_path / "ramp.pgm")) == list(range(256))
    assert decode.decode_image(tmp_path / "ramp.png", (4, 4), grayscale=False).shape == (3, 4, 4)


def test_32_bit_integer_and_float_modes_have_fixed_scales(tmp_path):
    full = 2**31 - 1
    ints = np.array([[round(k * full / 255) for k in (0, 77, 128, 255)] + [-5]], np.int32)
    Image.fromarray(ints, "I").save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert grey(decode.decode_image(tmp_path / "i32.tif")) == [0, 77, 128, 255, 0]  # negatives clip to 0
    floats = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]], np.float32)
    Image.fromarray(floats, "F").save(tmp_path / "f.tif")
    assert grey(decode.decode_image(tmp_path / "f.tif")) == [0, 128, 255, 255, 0, 0]  # 0..1 → 0..255, clipped
    with Image.open(tmp_path / "i32.tif") as im:
        assert decode.conversion(im) == "32-bit grey (I) ×255/2,147,483,647"
    with Image.open(tmp_path / "f.tif") as im:
        assert decode.conversion(im) == "float grey (F) 0..1 ×255, clipped"


def test_conversion_names_what_decoding_does(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint16)).save(tmp_path / "a.png")
    img(tmp_path / "p.png", 1, mode="P", size=(2, 2))
    img(tmp_path / "t.png", (1, 2, 3, 4), mode="RGBA", size=(2, 2))
    img(tmp_path / "b.bmp", 1, mode="1", size=(2, 2))
    img(tmp_path / "rgb.png", size=(2, 2))
    expected = {"a.png": "16-bit grey (I;16) ÷257", "p.png": "palette → RGB", "t.png": "transparency (RGBA) on black",
                "b.bmp": "1-bit → grey", "rgb.png": None}
    for name, words in expected.items():
        assert decode.probe(tmp_path / name).conversion == words, name


# ------------------------------------------------------------------------------------- big photos, bombs


def test_a_108_mp_jpeg_decodes_at_reduced_size(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("L", (12000, 9000), 128).save(path, quality=20)  # 108 MP, a few hundred KB
    x = decode.decode_image(path, (50, 50))  # drafted at 1/8: 1500×1125 = 1.7 MP to decode
    assert x.shape == (3, 50, 50) and abs(float(x.float().mean()) - 128) <= 1  # JPEG rounding
    assert decode.probe(path).size == (12000, 9000)  # inspect does not call it a bomb either
    with pytest.raises(CnnlabError, match=r"12000×9000 = 108 MP to decode, over the limit of 100 MP .* raise "
                                          r"`data.max_pixels` or \$CNNLAB_MAX_PIXELS"):
        decode.decode_image(path)  # the full size really is over the limit


def test_bombs_are_judged_by_the_decoded_size_and_the_limit_is_a_setting(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.new("L", (4000, 3000), 50).save(path, quality=20)
    with pytest.raises(CnnlabError, match=r"4000×3000 \(decoded at 1000×750\)"):
        decode.decode_image(path, (750, 1000), max_pixels=500_000)  # 1/4 scale still needs 750k pixels
    assert decode.decode_image(path, (50, 50), max_pixels=500_000).shape == (3, 50, 50)  # 1/8: 188k
    with pytest.raises(decode.BadImage, match="decoded at 500×375"):
        decode.probe(path, max_pixels=100_000)  # even the smallest decode is too big
    monkeypatch.setenv("CNNLAB_MAX_PIXELS", "1.2e7")
    assert decode.pixel_limit() == 12_000_000 and decode.decode_image(path).shape == (3, 3000, 4000)
    assert decode.pixel_limit(5) == 5  # the config's value wins over the environment
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own check would refuse it at open
    assert decode.decode_image(path, (50, 50)).shape == (3, 50, 50)
    assert Image.MAX_IMAGE_PIXELS == 1000  # and is back in force afterwards
    monkeypatch.setenv("CNNLAB_MAX_PIXELS", "lots")
    with pytest.raises(CnnlabError, match=r"\$CNNLAB_MAX_PIXELS is 'lots'; set it to a positive number"):
        decode.pixel_limit()
    with pytest.raises(CnnlabError, match="`data.max_pixels` is 0"):
        decode.pixel_limit(0)


def test_a_tiff_pillow_refuses_prints_nothing_but_our_line(tmp_path):
    import struct

    # 28×28, SamplesPerPixel 200: Pillow's TIFF plugin logs "More samples per pixel than can be decoded"
    entries = [(256, 4, 28), (257, 4, 28), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 12 * 9 + 4),
               (277, 3, 200), (278, 4, 28), (279, 4, 100)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", t, ty, 1, v) if ty == 4 else struct.pack("<HHIHH", t, ty, 1, v, 0)
        for t, ty, v in entries) + b"\0" * 4
    (tmp_path / "spp.tif").write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 100)
    with pytest.raises(CnnlabError, match="spp.tif: not an image"):
        decode.decode_image(tmp_path / "spp.tif", (4, 4))
    # in a fresh process: pytest's log capture would stand in for the handler Python's last resort prints with
    code = ("from cnnlab.data import decode\ntry:\n    decode.decode_image(__import__('sys').argv[1], (4, 4))\n"
            "except Exception as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spp.tif")], capture_output=True, text=True,
                          timeout=120)
    assert "spp.tif: not an image" in done.stdout and done.stderr == ""
