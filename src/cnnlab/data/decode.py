"""One image file to a fixed-size uint8 array: the decoder of folders, ``datasets inspect`` and ``predict``.

Speed comes from PIL's JPEG ``draft()``: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain while it
decodes, so a 500×375 photo headed for 50×50 is decoded at 63×47 and then resized, several times cheaper
than a full decode; a 108 MP phone photo (12000×9000) headed for 224×224 is decoded at 1500×1125. Crop and
resize are one ``resize(box=...)``. A bad file raises :class:`BadImage` with a short reason, never a crash.

Pixel values mean the same in every image: modes wider than 8 bits are scaled by their bit depth, always
(16-bit ÷257, so 257·k decodes to k; n-bit integers ×255/(2ⁿ−1); floats are taken as 0..1), never by
what one image happens to hold. :func:`conversion` says in words what a mode becomes.

Decompression bombs (tiny files claiming gigapixels) are judged by the pixels that must really be decoded:
the JPEG draft size when the image is reduced, the full size otherwise. The limit (:func:`pixel_limit`) is
``data.max_pixels`` in a config, else ``$CNNLAB_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.errors import CnnlabError
from cnnlab.files import what_is

if TYPE_CHECKING:
    import torch

RESIZE_MODES = ("squash", "crop")

# Pillow's plugins log what they refuse (TiffImagePlugin: "More samples per pixel than can be decoded: 200")
# before raising. With no handler configured, Python's last-resort handler prints that on stderr above our
# one `error:` line; a NullHandler is the library's way to stay quiet. An application that configures
# logging still gets the records (they propagate to its root handlers).
logging.getLogger("PIL").addHandler(logging.NullHandler())

# Largest decode, in pixels: 100 MP (a 12000×8000 photo, ~300 MB as RGB). More is almost always a
# decompression bomb; JPEGs are judged by their reduced (draft) size, so big genuine photos still decode.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "CNNLAB_MAX_PIXELS"
LIMIT_HINT = f"if it is a genuine image, raise `data.max_pixels` or ${MAX_PIXELS_ENV}"
# JPEG draft may decode down to this fraction of the target size in one axis (the resize then upsamples
# by at most 11%): it lets 500×375 -> 50×50 use libjpeg's 1/8 scale (63×47), ~1.5x faster than 1/4.
DRAFT_SLACK = 0.9
_DRAFT_FORMATS = ("JPEG", "MPO")  # what draft() can reduce while decoding, by up to 8 per axis
# Formats whose EXIF orientation we apply ourselves; Pillow turns a TIFF upright itself (its size is upright).
_ORIENTED_FORMATS = ("JPEG", "MPO", "WEBP", "PNG")

# EXIF orientation tag (0x0112) value -> the transpose that shows the image upright.
_T = Image.Transpose
_ORIENT = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE, 6: _T.ROTATE_270,
           7: _T.TRANSVERSE, 8: _T.ROTATE_90}
_PILLOW_LIMIT = threading.Lock()


class BadImage(Exception):
    """A file that cannot be used as an image; ``str(exc)`` is a short reason for reports."""


def pixel_limit(value: int | None = None) -> int:
    """The decode limit in pixels: ``value`` (``data.max_pixels``), else ``$CNNLAB_MAX_PIXELS``, else 100 MP.

    Raises:
        CnnlabError: a limit that is not a positive whole number.
    """
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CnnlabError(f"`data.max_pixels` is {value!r}; give a positive number of pixels, e.g. 200000000")
        return value
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = float(text)
    except ValueError:
        limit = 0.0
    if not (limit >= 1 and limit == int(limit)):
        raise CnnlabError(f"${MAX_PIXELS_ENV} is {text!r}; set it to a positive number of pixels (e.g. 200000000 "
                          "or 2e8), or unset it for the default 100 MP")
    return int(limit)


@contextlib.contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Turns Pillow's own bomb check off for a file cnnlab has checked itself (ours judges the decoded size)."""
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _amount(pixels: int) -> str:
    """``108 MP``, ``1.7 MP``, ``120,000 pixels``."""
    if pixels >= 1_000_000:
        return f"{pixels / 1e6:,.{0 if pixels >= 10_000_000 else 1}f} MP"
    return f"{pixels:,} pixels"


def _too_many(w: int, h: int, decoded: tuple[int, int], limit: int) -> BadImage:
    dw, dh = decoded
    at = f" (decoded at {dw}×{dh})" if (dw, dh) != (w, h) else ""
    return BadImage(f"too many pixels: {w}×{h}{at} = {_amount(dw * dh)} to decode, over the limit of "
                    f"{_amount(limit)} (decompression bomb?); {LIMIT_HINT}")


def smallest_decode(im: Image.Image) -> tuple[int, int]:
    """The smallest (W, H) the file can be decoded at: 1/8 per axis for JPEG (draft), else its full size."""
    w, h = im.size
    return (math.ceil(w / 8), math.ceil(h / 8)) if im.format in _DRAFT_FORMATS else (w, h)


def _open(path, limit: int) -> Image.Image:
    """Opens an image lazily (header only), turning every failure into a :class:`BadImage` reason.

    Refuses a file whose smallest possible decode is over ``limit`` pixels.
    """
    if (why := what_is(path)) is not None:  # a FIFO would block the decoder, a device never end
        raise BadImage(why)
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:  # Pillow's check judges the stored size; ours the decoded one
            with _pillow_limit_off():
                im = Image.open(path)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImage(f"unreadable: {exc}") from None
    w, h = im.size
    if w == 0 or h == 0:
        im.close()
        raise BadImage(f"zero-sized image {w}×{h}")
    low = smallest_decode(im)
    if low[0] * low[1] > limit:
        im.close()
        raise _too_many(w, h, low, limit)
    return im


def _crop_box(w: int, h: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Central box of (w, h) with the aspect ratio of ``size`` = (H, W), in (left, top, right, bottom)."""
    aspect = size[1] / size[0]  # width / height of the target
    if w / h > aspect:
        cw = h * aspect
        return (w - cw) / 2, 0.0, (w + cw) / 2, float(h)
    ch = w / aspect
    return 0.0, (h - ch) / 2, float(w), (h + ch) / 2


# ------------------------------------------------------------------------------------------- bit depth


def sample_bits(im: Image.Image) -> int | None:
    """Bits per sample of an integer mode wider than 8 bits (16 for ``I;16``), None for other modes.

    Mode ``I`` holds 32-bit integers; a TIFF says in its BitsPerSample tag how many of them are used (12-bit
    camera data in 16-bit words says 16), and Pillow reads 16-bit PGM/PPM into ``I`` already scaled to 16 bits.
    """
    if im.mode.startswith("I;16"):
        return 16
    if im.mode != "I":
        return None
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258, (32,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if isinstance(bits, int) and 8 < bits <= 32 else 32
    if im.format in ("PPM", "PNG"):
        return 16
    return 32


def conversion(im: Image.Image) -> str | None:
    """In words, what decoding does to this file's pixels beyond resizing (for ``datasets inspect``), or None.

    E.g. ``16-bit grey (I;16) ÷257``, ``float (F) 0..1 ×255``, ``CMYK → RGB``, ``transparency on black``.
    """
    bits = sample_bits(im)
    if bits == 16:
        return f"16-bit grey ({im.mode}) ÷257"
    if bits is not None:
        return f"{bits}-bit grey ({im.mode}) ×255/{2 ** (bits - 1 if bits == 32 else bits) - 1:,}"
    if im.mode == "F":
        return "float grey (F) 0..1 ×255, clipped"
    if im.mode == "P":
        return "palette → RGB" + (" with transparency on black" if "transparency" in im.info else "")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return f"transparency ({im.mode}) on black"
    if im.mode == "1":
        return "1-bit → grey"
    if im.mode in ("L", "RGB"):
        return None
    return f"{im.mode} → RGB"


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    """An ``I;16``/``I``/``F`` image as 8-bit ``L``, scaled by its bit depth (never by its own range)."""
    bits = sample_bits(im)
    if bits is not None and bits <= 16:  # exact integer rounding: 257·k -> k
        full = (1 << bits) - 1
        arr = np.asarray(im).astype(np.int64)
        out = (np.clip(arr, 0, full) * 255 + full // 2) // full
    elif bits is not None:  # 32-bit integers: signed in Pillow's mode I, so 2**31 - 1 is full scale
        full = (1 << (bits - 1 if bits == 32 else bits)) - 1
        out = np.floor(np.clip(np.asarray(im, dtype=np.float64), 0, full) * (255 / full) + 0.5)
    else:  # float: 0..1 is the convention (scikit-image, torchvision); NaN becomes 0
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        out = np.floor(np.clip(arr, 0.0, 1.0) * 255 + 0.5)
    return Image.fromarray(out.astype(np.uint8), "L")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Modes that resize badly or not at all (palette, 1-bit, 16/32-bit, float) to L / RGB / RGBA."""
    if im.mode in ("RGB", "L", "RGBA", "LA", "CMYK", "YCbCr"):
        return im
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode.startswith("I") or im.mode == "F":
        return _scale_to_8bit(im)
    return im.convert("RGBA" if "A" in im.mode else "RGB")


# ---------------------------------------------------------------------------------------------- decode


def _decode(path, size: tuple[int, int] | None, grayscale: bool, resize: str, limit: int) -> np.ndarray:
    """Decodes one file to a uint8 array (H, W, C); raises :class:`BadImage` with a reason."""
    im = _open(path, limit)
    try:
        if im.format not in _DRAFT_FORMATS:  # decoded whole anyway: load now, so sizes are the loaded ones
            with _pillow_limit_off() if _over_pillow_limit(im) else contextlib.nullcontext():
                im.load()
        orient = _orientation(im)
        w, h = im.size
        if size is not None:
            th, tw = size
            if orient >= 5:  # stored sideways: work in stored orientation, transpose the small result
                th, tw = tw, th
            box = _crop_box(w, h, (th, tw)) if resize == "crop" else (0.0, 0.0, float(w), float(h))
            # DCT-domain downscale (JPEG only) to the smallest size that still covers the box at target size,
            # give or take DRAFT_SLACK
            s = DRAFT_SLACK * max(tw / (box[2] - box[0]), th / (box[3] - box[1]))
            im.draft("L" if grayscale else "RGB", (math.ceil(w * s), math.ceil(h * s)))
            fx, fy = im.size[0] / w, im.size[1] / h  # draft may have shrunk the image
            box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        if im.size[0] * im.size[1] > limit:
            raise _too_many(w, h, im.size, limit)
        # our limit held for the pixels really decoded: Pillow's (on the stored size) may stand aside
        with _pillow_limit_off() if _over_pillow_limit(im) else contextlib.nullcontext():
            out = _to_8bit(im)
            if size is not None:
                out = out.resize((tw, th), Image.Resampling.BILINEAR, box=box)
            else:
                out.load()
        if orient != 1:
            out = out.transpose(_ORIENT[orient])
        return _finish(out, grayscale)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"too many pixels (decompression bomb?); {LIMIT_HINT}") from None
    except Exception as exc:  # a damaged file can fail anywhere in a decoder (OSError, struct.error, ...)
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise BadImage(f"{'truncated' if 'truncated' in reason else 'corrupt'}: {reason}") from None
    finally:
        im.close()


def _over_pillow_limit(im: Image.Image) -> bool:
    """Whether Pillow's own bomb check (on the stored size) would stop a load that cnnlab's limit allows."""
    return im.size[0] * im.size[1] > (Image.MAX_IMAGE_PIXELS or math.inf)


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 = upright); a damaged EXIF block only loses the orientation."""
    if im.format not in _ORIENTED_FORMATS:
        return 1
    try:
        orient = im.getexif().get(0x0112, 1)
    except Exception:  # PIL's EXIF parser raises many kinds of error on junk
        return 1
    return orient if orient in _ORIENT else 1


def _finish(im: Image.Image, grayscale: bool) -> np.ndarray:
    """Final colour conversion to (H, W, 1) or (H, W, 3); transparent pixels become black."""
    if im.mode in ("RGBA", "LA"):
        arr = np.asarray(im, dtype=np.uint16)
        alpha = arr[..., -1:]
        arr = ((arr[..., :-1] * alpha + 127) // 255).astype(np.uint8)  # premultiply = composite on black
        im = Image.fromarray(arr[..., 0] if im.mode == "LA" else arr, "L" if im.mode == "LA" else "RGB")
    want = "L" if grayscale else "RGB"
    if im.mode != want:
        im = im.convert(want)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_array(path: str | os.PathLike, size: tuple[int, int] | None, grayscale: bool, resize: str,
                 limit: int) -> np.ndarray:
    """:func:`decode_image`'s work for callers that handle :class:`BadImage` themselves: uint8 (H, W, C)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's warnings on odd EXIF/ICC data or big images: we check
        return _decode(path, size, grayscale, resize, limit)


def decode_image(path: str | os.PathLike, size: tuple[int, int] | None = None, grayscale: bool = False,
                 resize: str = "squash", *, max_pixels: int | None = None) -> torch.Tensor:
    """Reads one image file as a uint8 tensor (C, H, W), upright (EXIF orientation applied).

    Args:
        path: the file, in any format Pillow decodes.
        size: (H, W) to resize to; None keeps the file's own size.
        grayscale: one channel (luma) instead of RGB.
        resize: ``"squash"`` (plain resize, aspect ratio not kept) or ``"crop"`` (centre-crop to the
            target's aspect ratio, then resize).
        max_pixels: the most pixels to decode (see :func:`pixel_limit`); None: the environment or 100 MP.

    Raises:
        CnnlabError: the file cannot be read as an image (one-line reason).
    """
    import torch

    if resize not in RESIZE_MODES:
        raise CnnlabError(f"unknown resize mode {resize!r}; valid: {', '.join(RESIZE_MODES)}")
    try:
        arr = decode_array(path, size, grayscale, resize, pixel_limit(max_pixels))
    except BadImage as exc:
        raise CnnlabError(f"{path}: {exc}; replace or remove the file") from None
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # PIL's arrays are read-only


class Probe(NamedTuple):
    """A header-only look at a file (see :func:`probe`)."""

    format: str
    size: tuple[int, int]  # (W, H) as displayed: EXIF orientation applied
    mode: str
    conversion: str | None  # what decoding does to the pixel values (see :func:`conversion`)


def probe(path: str | os.PathLike, *, max_pixels: int | None = None) -> Probe:
    """Header-only look at a file: format, displayed (W, H), mode and conversion, without decoding pixels.

    Catches what a header read can: empty, non-image and bomb files (judged by their smallest decode), and
    JPEG/PNG files whose end marker is missing (truncated downloads).

    Raises:
        BadImage: the file is not usable (reason in the message).
    """
    limit = pixel_limit(max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = _open(path, limit)
        with im:
            w, h = im.size
            upright = (h, w) if _orientation(im) >= 5 else (w, h)
            found = Probe(im.format or "?", upright, im.mode, conversion(im))
    marker = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}.get(found.format)
    if marker:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))  # end markers may be followed by padding
            if marker not in f.read():
                raise BadImage(f"truncated ({found.format} end marker missing)")
    return found
