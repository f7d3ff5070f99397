"""What counts as an image file: the one rule behind folder datasets, ``datasets inspect`` and ``predict``.

An image is a file Pillow can decode, whatever its name: PNG, JPEG, TIFF, BMP, GIF, WebP, PPM/PGM, TGA,
ICO, PSD, JPEG 2000, QOI, AVIF (where Pillow has it), ... A file whose extension belongs to such a format is
taken as an image candidate without being read (its content is checked when it is decoded; a broken one
is then reported as unreadable, with a reason). Any other file is decided by content: Pillow reads its
header, and it is an image when a decoder recognises it (``photo`` without an extension, ``scan.dat``).
What is left is not an image; callers count those and name them in one line
(:meth:`ImageFiles.not_images_line`).

Formats Pillow only identifies but cannot decode by itself (HDF5, GRIB, BUFR and WMF stubs, MPEG, and
PostScript without Ghostscript) do not count as images: they would fail every decode.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import EpsImagePlugin, Image, ImageFile

from cnnlab.errors import CnnlabError

# Formats Pillow recognises but has no decoder for (stubs, or decoding needs an outside program).
_IDENTIFY_ONLY = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "MPEG"})
NAMES_SHOWN = 5  # file names a one-line summary names before "... and N more"


def _decodable(fmt: str) -> bool:
    if fmt in _IDENTIFY_ONLY:
        return False
    return fmt != "EPS" or bool(EpsImagePlugin.has_ghostscript())


@cache
def image_extensions() -> frozenset[str]:
    """Lower-case extensions (``.tif``, ``.jpg``, ...) of every format this Pillow can decode."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and _decodable(fmt))


def sniff(path: str | os.PathLike) -> str | None:
    """The format Pillow recognises in the file's content (e.g. ``TIFF``), or None when it is not an image it
    can decode. Reads only the header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd headers and large sizes: the decoder checks
            with Image.open(path) as im:
                if isinstance(im, ImageFile.StubImageFile) or not _decodable(im.format or ""):
                    return None
                return im.format or "?"
    except Image.DecompressionBombError:
        return "?"  # an image, too big for Pillow's default check: the decoder applies cnnlab's own limit
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, AttributeError, KeyError):
        return None  # UnidentifiedImageError is an OSError


def is_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` counts as an image: an extension of a decodable format, else by content."""
    return os.path.splitext(path)[1].lower() in image_extensions() or sniff(path) is not None


@dataclass
class ImageFiles:
    """The images under a folder and the files left out because they are not images.

    Attributes:
        root: the folder (or the single file's folder).
        files: the image files, sorted by their path relative to ``root``.
        not_images: paths relative to ``root`` of the other files (hidden files are ignored, not counted).
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)

    def not_images_line(self, where: str | None = None) -> str | None:
        """One line counting and naming the files skipped for their type, or None when there are none."""
        return not_images_line(self.not_images, where)


def not_images_line(names: list[str] | tuple[str, ...], where: str | None = None) -> str | None:
    """``skipped 3 files that are not images (Pillow cannot read them): notes.txt, a.csv, clip.mp4``."""
    if not names:
        return None
    shown = ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")
    n = len(names)
    return (f"skipped {n} file{'s' if n > 1 else ''}{f' in {where}' if where else ''} that "
            f"{'are not images' if n > 1 else 'is not an image'} (Pillow cannot read {'them' if n > 1 else 'it'}): "
            f"{shown}")


def find_images(path: str | os.PathLike) -> ImageFiles:
    """The image files under a folder, recursively (see the module docstring for what counts), and the rest.

    Hidden files and folders (macOS ``._x.jpg`` forks, ``.git``, ``.DS_Store``) are left out unnoticed. A path
    to a single file gives just that file when it is an image.

    Raises:
        CnnlabError: the path does not exist, or is a single file that is not an image.
    """
    root = Path(path).expanduser()
    if root.is_file():
        if not is_image(root):
            raise CnnlabError(f"{root} is not an image file Pillow can read (it recognises none of its formats in "
                              "it); give an image (PNG, JPEG, TIFF, BMP, WebP, ...) or a folder of images")
        return ImageFiles(root.parent, [root])
    if not root.is_dir():
        raise CnnlabError(f"{root} does not exist; give an image file or a folder of images")
    found = ImageFiles(root)
    listed = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders in place
        listed.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    for file in sorted(listed, key=lambda p: p.relative_to(root).as_posix()):
        if is_image(file):
            found.files.append(file)
        else:
            found.not_images.append(file.relative_to(root).as_posix())
    return found


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image files of :func:`find_images` (a folder's, recursively, sorted; or the one file given).

    Raises:
        CnnlabError: as :func:`find_images`.
    """
    return find_images(path).files
