"""The first tutorial's hand-made convolution, pooling and patch arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.errors import CnnlabError
from cnnlab.inspect.kernels import EDGE_KERNEL, convolve, max_pool2x2, patch_numbers

# out[r, c] = 8 × centre − sum of the 8 neighbours of pixel (r + 1, c + 1), clipped to 0..255:
#   (0, 0): 8·20 − 110 = 50    (0, 1): 8·10 − 120 = −40 → 0
#   (1, 0): 8·10 − 120 = −40 → 0    (1, 1): 8·40 − 90 = 230
IMAGE = np.array([[10, 10, 10, 10],
                  [10, 20, 10, 10],
                  [10, 10, 40, 10],
                  [10, 10, 10, 10]], dtype=np.uint8)


def test_edge_kernel_is_the_tutorials() -> None:
    assert EDGE_KERNEL.tolist() == [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]


def test_convolve_gives_the_hand_computed_numbers() -> None:
    np.testing.assert_array_equal(convolve(IMAGE, EDGE_KERNEL), [[50, 0], [0, 230]])
    np.testing.assert_array_equal(convolve(IMAGE, EDGE_KERNEL, weight=2), [[100, 0], [0, 255]])  # 460 clips
    np.testing.assert_array_equal(convolve(IMAGE[None], EDGE_KERNEL), [[50, 0], [0, 230]])  # (1, H, W) too


def test_convolve_does_not_flip_the_kernel() -> None:
    img = np.arange(25, dtype=np.float64).reshape(5, 5)
    top_left = np.zeros((3, 3))
    top_left[0, 0] = 1
    np.testing.assert_array_equal(convolve(img, top_left), img[:3, :3])  # like the loop and CNN layers


def test_max_pool_keeps_the_largest_of_each_block() -> None:
    img = np.arange(25).reshape(5, 5)  # odd size: the last row and column are dropped
    np.testing.assert_array_equal(max_pool2x2(img), [[6, 8], [16, 18]])
    with pytest.raises(CnnlabError, match="at least 2×2"):
        max_pool2x2(np.zeros((1, 4)))


def test_patch_numbers() -> None:
    p = patch_numbers(IMAGE, EDGE_KERNEL, 0, 1)
    np.testing.assert_array_equal(p.patch, [[10, 10, 10], [20, 10, 10], [10, 40, 10]])
    np.testing.assert_array_equal(p.products, [[-10, -10, -10], [-20, 80, -10], [-10, -40, -10]])
    assert (p.total, p.output) == (-40.0, 0.0)
    assert patch_numbers(IMAGE, EDGE_KERNEL, 1, 1)[2:] == (230.0, 230.0)
    with pytest.raises(CnnlabError, match=r"\(2, 0\) is outside the 2×2 output; use row 0..1, col 0..1"):
        patch_numbers(IMAGE, EDGE_KERNEL, 2, 0)
    with pytest.raises(CnnlabError, match="grayscale"):
        convolve(np.zeros((3, 4, 4)), EDGE_KERNEL)
