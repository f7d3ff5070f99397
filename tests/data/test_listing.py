"""Which files of a folder dataset are images and what their labels are (nothing decoded)."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from cnnlab.config import load_config
from cnnlab.data.listing import FolderSpec, collect, folder_classes, folder_spec
from cnnlab.errors import CnnlabError


def img(path, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path, format=fmt)
    return path


def test_subfolders_any_format_and_files_that_are_not_images(tmp_path):
    img(tmp_path / "cat" / "a.tif")
    img(tmp_path / "cat" / "b.webp")
    img(tmp_path / "dog" / "c", fmt="PNG")
    img(tmp_path / "loose.png")
    (tmp_path / "README.txt").write_text("x")
    (tmp_path / "dog" / "Thumbs.db").write_bytes(bytes(64))
    listing = collect(FolderSpec(tmp_path))
    assert listing.mode == "subfolders"
    assert listing.items == [("cat/a.tif", "cat"), ("cat/b.webp", "cat"), ("dog/c", "dog")]
    assert listing.skipped == [("loose.png", "not inside a class subfolder")]
    assert listing.not_images == ["README.txt", "dog/Thumbs.db"]
    assert folder_classes(FolderSpec(tmp_path)) == ["cat", "dog"]


def test_a_fifo_or_a_looping_link_among_the_images_is_skipped_by_name(tmp_path):
    img(tmp_path / "cat" / "a.png")
    os.mkfifo(tmp_path / "cat" / "b.png")  # never opened: reading it would wait for a writer
    os.symlink("c.png", tmp_path / "cat" / "c.png")
    os.symlink("/nonexistent/d.png", tmp_path / "cat" / "d.png")
    listing = collect(FolderSpec(tmp_path))
    assert listing.items == [("cat/a.png", "cat")]
    assert listing.skipped == [("cat/b.png", "a FIFO, not a file"), ("cat/c.png", "a symbolic link that loops"),
                               ("cat/d.png", "a symbolic link to /nonexistent/d.png, which does not exist")]


def test_file_names_and_split_folders(tmp_path):
    img(tmp_path / "flat" / "cat.1.tiff")
    img(tmp_path / "flat" / "dog.2.bmp")
    assert collect(FolderSpec(tmp_path / "flat")).items == [("cat.1.tiff", "cat"), ("dog.2.bmp", "dog")]
    img(tmp_path / "splits" / "train" / "x.png")
    img(tmp_path / "splits" / "test" / "y.png")
    with pytest.raises(CnnlabError, match="split folders"):
        collect(FolderSpec(tmp_path / "splits"))


def test_folder_options_reach_the_folder_spec():
    cfg = load_config(None, [("data.dataset", "folder:/x"), ("data.max_pixels", 5), ("data.resize", "crop")]).data
    spec = folder_spec(cfg)
    assert (spec.max_pixels, spec.resize, str(spec.path)) == (5, "crop", "/x")
