"""Folder datasets: labels, decoding options, bad files, the decoded cache, inspection."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import cache as decode_cache
from cnnlab.data.folder import load_folder
from cnnlab.data.listing import FolderSpec
from cnnlab.errors import CnnlabError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "folders"


def img(path: Path, color=RED, size=(40, 30), mode="RGB", **save) -> Path:
    """Writes a solid-colour image (size is W×H, PIL order); the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def load(path: Path, workers: int = 1, **options):
    return load_folder(FolderSpec(path, **options), workers=workers, progress=False)


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width×height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def bad_files(folder: Path, prefix: str = "cat") -> dict[str, str]:
    """Writes one of each kind of unusable file; returns {file name: expected words in the reason}."""
    (folder / f"{prefix}.empty.jpg").write_bytes(b"")
    (folder / f"{prefix}.text.jpg").write_text("these are not the pixels you are looking for")
    buf = io.BytesIO()
    Image.effect_noise((30, 20), 60).convert("RGB").save(buf, "JPEG", quality=95)
    (folder / f"{prefix}.cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    png_bomb(folder / f"{prefix}.bomb.png", 30000, 30000)
    return {f"{prefix}.empty.jpg": "empty", f"{prefix}.text.jpg": "not an image",
            f"{prefix}.cut.jpg": "truncated", f"{prefix}.bomb.png": "too many pixels"}


def test_subfolder_labels_sorted_classes_and_pixels(tmp_path):
    root = tmp_path / "pets"
    img(root / "zebra" / "a.png", BLUE)
    img(root / "apple" / "b.jpg", RED)
    img(root / "apple" / "nested" / "c.png", RED)
    img(root / "mango" / "d.png", GREEN, size=(17, 50))
    ds = load(root, image_size=16)
    assert ds.data.classes == ("apple", "mango", "zebra")
    assert ds.files == ("apple/b.jpg", "apple/nested/c.png", "mango/d.png", "zebra/a.png")
    assert ds.data.labels.tolist() == [0, 0, 1, 2]
    assert ds.data.labels.dtype == torch.int64
    assert ds.data.images.shape == (4, 3, 16, 16) and ds.data.images.dtype == torch.uint8
    means = ds.data.images.float().mean(dim=(2, 3))
    assert torch.allclose(means[1], torch.tensor([255.0, 0, 0]))  # PNG: exact
    assert torch.allclose(means[0], torch.tensor([255.0, 0, 0]), atol=4)  # JPEG: close
    assert torch.allclose(means[2], torch.tensor([0, 255.0, 0]))
    assert ds.report.labels == "subfolders" and ds.report.counts == {"apple": 2, "mango": 1, "zebra": 1}


def test_images_are_a_view_of_the_cache_file(tmp_path):
    img(tmp_path / "d" / "cat" / "a.png", RED)
    img(tmp_path / "d" / "dog" / "b.png", BLUE)
    ds = load(tmp_path / "d", image_size=(6, 5))
    raw = np.fromfile(Path(ds.report.cache) / "images.u8", dtype=np.uint8).reshape(2, 3, 6, 5)
    assert np.array_equal(ds.data.images.numpy(), raw)
    ds.data.images[0] = 7  # copy-on-write map: the cache file must not change
    assert np.array_equal(np.fromfile(Path(ds.report.cache) / "images.u8", dtype=np.uint8).reshape(2, 3, 6, 5), raw)


def test_filename_labels_default_and_custom_pattern(tmp_path):
    root = tmp_path / "train"
    for name in ("cat.1.jpg", "cat.22.jpg", "dog_7.png", "dog.3.JPG", "1234.jpg"):
        img(root / name)
    (root / "notes.txt").write_text("not an image: counted and named, never decoded")
    ds = load(root, image_size=8)
    assert ds.data.classes == ("cat", "dog") and ds.report.labels == "filename"
    assert ds.report.counts == {"cat": 2, "dog": 2}
    assert [p for p, _ in ds.report.skipped] == ["1234.jpg"]
    assert ds.report.not_images == ("notes.txt",) and ds.report.to_dict()["not_images"] == ["notes.txt"]
    assert ("skipped 1 file that is not an image (Pillow cannot read it): notes.txt" in ds.report.to_lines())
    assert "does not match" in ds.report.skipped[0][1]
    ds = load(root, image_size=8, pattern=r"\.(\d)\d*\.")  # label = first digit of the number
    assert ds.data.classes == ("1", "2", "3")


def test_csv_labels_with_and_without_header(tmp_path):
    root = tmp_path / "set"
    for name, color in (("a.png", RED), ("b.png", BLUE), ("sub/c.png", BLUE)):
        img(root / name, color)
    (root / "labels.csv").write_text("file,label\na.png,warm\nb.png,cold\nsub/c.png,cold\nmissing.png,cold\n"
                                     "a.png,cold\n")
    ds = load(root, image_size=4, csv="labels.csv")
    assert ds.report.labels == "csv" and ds.data.classes == ("cold", "warm")
    assert ds.files == ("a.png", "b.png", "sub/c.png") and ds.data.labels.tolist() == [1, 0, 0]
    reasons = dict(ds.report.skipped)
    assert "missing" in reasons["missing.png"] and "twice" in reasons["a.png"]
    (root / "plain.csv").write_text("a.png,warm\nb.png,cold\n")
    ds = load(root / "plain.csv", image_size=4)  # the CSV itself as the path; no header row
    assert ds.files == ("a.png", "b.png") and ds.data.classes == ("cold", "warm")


def test_grayscale_is_luma(tmp_path):
    img(tmp_path / "d" / "g" / "a.png", (200, 100, 50))
    img(tmp_path / "d" / "h" / "b.png", (0, 0, 0))
    ds = load(tmp_path / "d", image_size=5, grayscale=True)
    assert ds.data.images.shape == (2, 1, 5, 5)
    luma = round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)
    assert abs(int(ds.data.images[0, 0, 2, 2]) - luma) <= 1


def test_crop_vs_squash(tmp_path):
    # 60×20 image: red | green | blue thirds. Crop to a square keeps only the green middle.
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    root = tmp_path / "d"
    (root / "x").mkdir(parents=True)
    Image.fromarray(arr).save(root / "x" / "a.png")
    img(root / "y" / "b.png", RED)
    squash = load(root, image_size=10, resize="squash").data.images[0]
    crop = load(root, image_size=10, resize="crop").data.images[0]
    assert load(root, image_size=(10, 12), resize="crop").data.images.shape == (2, 3, 10, 12)
    assert squash[0, :, 0].min() == 255 and squash[2, :, -1].min() == 255  # red left, blue right edges kept
    assert crop[1].float().mean() > 200 and crop[0].max() < 60 and crop[2].max() < 60  # ~all green


def test_bad_files_are_skipped_and_listed(tmp_path, monkeypatch):
    root = tmp_path / "train"
    img(root / "cat.1.jpg", size=(20, 15))
    img(root / "dog.1.jpg", BLUE, size=(20, 15))
    img(root / "dog.huge.png", BLUE, size=(40, 30))
    expected = bad_files(root)
    expected["dog.huge.png"] = "too many pixels"
    ds = load(root, image_size=8, max_pixels=1000)  # 40×30 = 1200 pixels: over this limit
    assert ds.files == ("cat.1.jpg", "dog.1.jpg") and ds.data.classes == ("cat", "dog")
    reasons = dict(ds.report.skipped)
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    assert any("skipped 5 file(s)" in line for line in ds.report.to_lines())
    data = json.loads(json.dumps(ds.report.to_dict()))
    assert {s["file"] for s in data["skipped"]} == set(expected)


def test_decode_pool_matches_in_process(tmp_path, monkeypatch, cache):
    root = tmp_path / "train"
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"cat.{i}.png")
        img(root / f"dog.{i}.jpg", (i * 20, 0, 0))
    bad_files(root, "dog")
    one = load(root, workers=1, image_size=12)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "other-cache"))
    monkeypatch.setattr(decode_cache, "MIN_POOL_FILES", 0)
    two = load(root, workers=2, image_size=12)
    assert not two.report.from_cache
    assert torch.equal(one.data.images, two.data.images) and torch.equal(one.data.labels, two.data.labels)
    assert one.report.skipped == two.report.skipped and len(two.report.skipped) == 4


def test_second_load_uses_cache_without_decoding(tmp_path, monkeypatch):
    root = tmp_path / "d"
    img(root / "a" / "1.png", RED)
    img(root / "b" / "2.png", BLUE)
    first = load(root, image_size=8)
    assert not first.report.from_cache

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is current")

    monkeypatch.setattr(decode_cache, "decode_chunk", no_decoding)
    second = load(root, image_size=8)
    assert second.report.from_cache and second.report.cache == first.report.cache
    assert torch.equal(second.data.images, first.data.images)
    assert any("from cache" in line for line in second.report.to_lines())


def test_cache_invalidated_by_file_or_option_change(tmp_path, cache):
    root = tmp_path / "d"
    img(root / "a" / "1.png", RED)
    target = img(root / "b" / "2.png", BLUE)
    first = load(root, image_size=8)
    img(target, GREEN)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    changed = load(root, image_size=8)
    assert not changed.report.from_cache and changed.report.cache != first.report.cache
    assert changed.data.images[1, 1].float().mean() == 255  # the new green pixels
    assert not Path(first.report.cache).exists()  # the stale cache of the same options is gone
    assert not load(root, image_size=8, grayscale=True).report.from_cache
    assert not load(root, image_size=9).report.from_cache
    assert load(root, image_size=8).report.from_cache  # each set of options keeps its own cache
    img(root / "c" / "3.png")  # a new file
    assert not load(root, image_size=8).report.from_cache
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_interrupted_decode_leaves_no_cache(tmp_path, monkeypatch, cache):
    root = tmp_path / "d"
    img(root / "a" / "1.png")
    img(root / "b" / "2.png")
    real = decode_cache.decode_chunk

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decode_cache, "decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(root, image_size=8)
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(decode_cache, "decode_chunk", real)
    assert not load(root, image_size=8).report.from_cache


def test_imbalance_flag(tmp_path):
    root = tmp_path / "d"
    for i in range(3):
        img(root / f"cat.{i}.png")
    for i in range(2):
        img(root / f"dog.{i}.png")
    report = load(root, image_size=4).report
    assert report.imbalance == 1.5 and not report.imbalanced  # 3:2 is at the threshold, not over
    img(root / "cat.9.png")
    report = load(root, image_size=4).report
    assert report.imbalance == 2 and report.imbalanced
    assert any("imbalanced" in line for line in report.to_lines())
    assert report.to_dict()["imbalanced"] is True


def test_user_mistakes_are_one_line_errors(tmp_path):
    img(tmp_path / "one" / "cat.1.png")
    img(tmp_path / "one" / "cat.2.png")
    for i, split in enumerate(("train", "test")):
        img(tmp_path / "splits" / split / "cat" / f"{i}.png")
    cases = [
        (lambda: load(tmp_path / "nope"), "does not exist"),
        (lambda: load(tmp_path / "one"), "two or more"),
        (lambda: load(tmp_path / "splits"), "split folders"),
        (lambda: FolderSpec(tmp_path, labels="folders"), "unknown label source"),
        (lambda: FolderSpec(tmp_path, pattern="(cat"), "not a valid regex"),
        (lambda: FolderSpec(tmp_path, image_size=0), "image_size"),
        (lambda: FolderSpec(tmp_path, resize="stretch"), "unknown resize mode"),
        (lambda: load(tmp_path / "one", labels="csv"), "needs a CSV"),
    ]
    for call, words in cases:
        with pytest.raises(CnnlabError, match=words) as err:
            call()
        assert "\n" not in str(err.value)


def test_every_format_pillow_reads_trains_alike(tmp_path):
    """A folder mixing PNG, TIFF (8 and 16 bit), PGM and a file without an extension loses none of them."""
    root = tmp_path / "mixed"
    img(root / "cat" / "a.png", (10, 10, 10))
    img(root / "cat" / "b.tif", (10, 10, 10))
    img(root / "cat" / "c.tiff", 10, mode="L")
    (root / "dog").mkdir()
    deep = Image.fromarray(np.full((30, 40), 257 * 200, np.uint16))  # 16-bit: 257·200 is 200 in 8 bits
    deep.save(root / "dog" / "d.tif")
    deep.save(root / "dog" / "e.pgm")
    Image.new("L", (40, 30), 200).save(root / "dog" / "scan", format="TIFF")
    (root / "dog" / "readme.md").write_text("the dogs")
    ds = load(root, image_size=4, grayscale=True)
    assert ds.files == ("cat/a.png", "cat/b.tif", "cat/c.tiff", "dog/d.tif", "dog/e.pgm", "dog/scan")
    assert ds.data.images[:3].unique().tolist() == [10] and ds.data.images[3:].unique().tolist() == [200]
    assert ds.report.skipped == () and ds.report.not_images == ("dog/readme.md",)


def test_a_folder_of_non_images_says_so(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    (tmp_path / "d" / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(40))
    with pytest.raises(CnnlabError, match=r"no images in .*d: its 2 file\(s\) \(a.txt, b.heic\) are not images "
                                          "Pillow can read"):
        load(tmp_path / "d", image_size=4)


def test_the_pixel_limit_is_part_of_the_cache_key(tmp_path):
    root = tmp_path / "d"
    img(root / "cat.1.png", size=(40, 30))
    img(root / "cat.2.png", size=(10, 10))
    img(root / "dog.1.png", BLUE, size=(10, 10))
    small = load(root, image_size=4, max_pixels=1000)
    assert small.files == ("cat.2.png", "dog.1.png") and "max_pixels" in small.report.skipped[0][1]
    assert load(root, image_size=4).files == ("cat.1.png", "cat.2.png", "dog.1.png")  # a new cache, not the old one
    with pytest.raises(CnnlabError, match="`data.max_pixels` is -1"):
        FolderSpec(root, max_pixels=-1)


def test_symlink_loops_in_a_folder_are_skipped_not_followed(tmp_path):
    root = tmp_path / "pets"
    img(root / "cat" / "a.png", RED)
    img(root / "dog" / "b.png", BLUE)
    os.symlink("..", root / "cat" / "up")  # a folder loop: os.walk does not follow links to folders
    os.symlink(root, root / "dog" / "again")
    os.symlink("self.png", root / "dog" / "self.png")  # a file link to itself
    os.symlink("y.png", root / "dog" / "x.png")
    os.symlink("x.png", root / "dog" / "y.png")
    ds = load(root, image_size=4)
    assert ds.files == ("cat/a.png", "dog/b.png") and ds.data.labels.tolist() == [0, 1]
    assert dict(ds.report.skipped) == {name: "a symbolic link that loops"
                                       for name in ("dog/self.png", "dog/x.png", "dog/y.png")}
