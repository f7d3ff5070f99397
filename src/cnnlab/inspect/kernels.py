"""The first tutorial's hand-made convolution and pooling, in numpy.

The tutorial slides a 3×3 kernel over a grayscale image with two loops, multiplies the 9 pixels under it
by the kernel, sums them and clips the result to 0..255; then keeps the largest of each 2×2 block. These
functions do the same (vectorised), plus the numbers of one patch for annotating the picture.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnlab.errors import CnnlabError

# Edge detector: 8 × the centre minus its 8 neighbours; 0 on flat regions, large across edges.
EDGE_KERNEL = np.array([[-1, -1, -1],
                        [-1, 8, -1],
                        [-1, -1, -1]], dtype=np.float64)


class Patch(NamedTuple):
    """The arithmetic behind one output pixel of :func:`convolve`."""

    patch: np.ndarray  # (kh, kw) input pixels under the kernel
    products: np.ndarray  # (kh, kw) patch * kernel, element-wise
    total: float  # products.sum() * weight, before clipping
    output: float  # total clipped to 0..255: the output pixel


def _image2d(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[0] == 1:  # (1, H, W) → (H, W)
        img = img[0]
    if img.ndim != 2:
        raise CnnlabError(f"the kernel demo needs a grayscale (H, W) image, got shape {tuple(np.shape(image))}")
    return img


def _kernel2d(kernel: np.ndarray, image: np.ndarray) -> np.ndarray:
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] > image.shape[0] or k.shape[1] > image.shape[1]:
        raise CnnlabError(f"kernel of shape {k.shape} does not fit a {image.shape} image; use a small 2-D kernel")
    return k


def convolve(image2d: np.ndarray, kernel: np.ndarray = EDGE_KERNEL, weight: float = 1.0) -> np.ndarray:
    """Slides ``kernel`` over the image without padding ("valid"), like the tutorial's loop.

    As in CNN layers (and the loop), the kernel is not flipped: each output is the sum of the patch times
    the kernel, times ``weight``, clipped to 0..255.

    Args:
        image2d: grayscale image (H, W), values 0..255.
        kernel: (kh, kw) weights; default :data:`EDGE_KERNEL`.
        weight: the tutorial's scale factor applied to each sum.

    Returns:
        float64 array (H - kh + 1, W - kw + 1) in 0..255.
    """
    img = _image2d(image2d)
    k = _kernel2d(kernel, img)
    windows = sliding_window_view(img, k.shape)  # (H-kh+1, W-kw+1, kh, kw), no copy
    return np.clip(np.einsum("ijkl,kl->ij", windows, k) * weight, 0, 255)


def max_pool2x2(image2d: np.ndarray) -> np.ndarray:
    """Largest value of each non-overlapping 2×2 block; an odd last row/column is dropped.

    Returns:
        array (H // 2, W // 2) of the input's dtype.
    """
    img = np.asarray(image2d)
    if img.ndim != 2 or min(img.shape) < 2:
        raise CnnlabError(f"2×2 max-pooling needs an (H, W) image of at least 2×2, got shape {img.shape}")
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return img[:2 * h, :2 * w].reshape(h, 2, w, 2).max(axis=(1, 3))


def patch_numbers(image2d: np.ndarray, kernel: np.ndarray, row: int, col: int, weight: float = 1.0) -> Patch:
    """The numbers behind ``convolve(image2d, kernel)[row, col]``.

    Args:
        image2d: grayscale image (H, W), values 0..255.
        kernel: (kh, kw) weights.
        row: output row, i.e. the patch's top row in the input (its centre is ``row + kh // 2``).
        col: output column, i.e. the patch's left column in the input.
        weight: the tutorial's scale factor.

    Raises:
        CnnlabError: (row, col) is outside the output.
    """
    img = _image2d(image2d)
    k = _kernel2d(kernel, img)
    rows, cols = img.shape[0] - k.shape[0] + 1, img.shape[1] - k.shape[1] + 1
    if not (0 <= row < rows and 0 <= col < cols):
        raise CnnlabError(f"patch position ({row}, {col}) is outside the {rows}×{cols} output; "
                          f"use row 0..{rows - 1}, col 0..{cols - 1}")
    patch = img[row:row + k.shape[0], col:col + k.shape[1]].copy()
    products = patch * k
    total = float(products.sum() * weight)
    return Patch(patch, products, total, float(np.clip(total, 0, 255)))
