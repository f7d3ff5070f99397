"""Batched augmentation: exact geometry, per-sample randomness from the generator, ranges, formats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import AugmentConfig
from cnnlab.data.augment import Augmenter, preview_grid
from cnnlab.errors import CnnlabError

EVERYTHING = AugmentConfig(hflip=True, vflip=True, crop_padding=2, translate=0.1, zoom=0.1, rotation=10,
                           brightness=0.2, contrast=0.2, noise=0.03, cutout=4)


def batch(n: int = 16, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_off_is_identity_and_disabled():
    aug = Augmenter(AugmentConfig())
    x = batch()
    assert not aug.enabled and not AugmentConfig().enabled
    assert torch.equal(aug(x, gen()), x)
    for field in ("hflip", "crop_padding", "rotation", "noise", "cutout"):
        assert AugmentConfig(**{field: 1}).enabled


def test_flips_are_exact_mirrors():
    x = batch()
    assert torch.equal(Augmenter(AugmentConfig(hflip=True), flip_p=1)(x, gen()), x.flip(3))
    assert torch.equal(Augmenter(AugmentConfig(vflip=True), flip_p=1)(x, gen()), x.flip(2))
    x = batch(n=64)
    out = Augmenter(AugmentConfig(hflip=True))(x, gen())
    flipped = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each sample is one or the other
    assert 16 < sum(flipped) < 48  # about half


@pytest.mark.parametrize("mode", ["zeros", "reflect", "nearest"])
def test_crop_padding_is_a_shifted_window(mode):
    pad = 3
    x = batch(n=24)
    out = Augmenter(AugmentConfig(crop_padding=pad, padding_mode=mode))(x, gen())
    assert out.shape == x.shape
    padded = F.pad(x, (pad,) * 4, mode={"zeros": "constant", "reflect": "reflect", "nearest": "replicate"}[mode])
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 12, dx:dx + 10])]
        assert len(hits) == 1, i
        offsets.add(hits[0])
    assert len(offsets) > 5  # per-sample offsets, not one shift for the batch


def test_same_seed_same_output_other_seed_differs_and_resumes():
    aug = Augmenter(EVERYTHING)
    x = batch()
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert not torch.equal(aug(x, gen(1)), aug(x, gen(2)))
    g = gen(3)
    state = g.get_state()
    first, second = aug(x, g), aug(x, g)
    assert not torch.equal(first, second)  # the stream moves on between batches
    g.set_state(state)
    assert torch.equal(aug(x, g), first)  # restoring the generator state resumes exactly


@pytest.mark.parametrize("channels", [1, 3])
def test_range_shape_dtype_and_channels(channels):
    x = batch(c=channels)
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # extremes that brightness/noise push out of range
    for dtype in (torch.float32, torch.float64):
        out = Augmenter(EVERYTHING)(x.to(dtype), gen())
        assert out.shape == x.shape and out.dtype == dtype
        assert out.min() >= 0 and out.max() <= 1
        assert (out == 1).any() and (out == 0).any()  # clamped, not rescaled


def test_geometry_is_the_same_for_every_channel():
    grey = batch(c=1)
    rgb = grey.expand(-1, 3, -1, -1).contiguous()
    geometric = AugmentConfig(hflip=True, vflip=True, crop_padding=2, translate=0.2, zoom=0.2, rotation=30,
                              cutout=3)
    out = Augmenter(geometric)(rgb, gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.allclose(out[:, :1], Augmenter(geometric)(grey, gen()), atol=1e-6)  # same draws, same result


def test_channels_last_is_kept_and_does_not_change_values():
    x = batch()
    xcl = x.contiguous(memory_format=torch.channels_last)
    out = Augmenter(EVERYTHING)(xcl, gen())
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, Augmenter(EVERYTHING)(x, gen()), atol=1e-6)
    assert Augmenter(EVERYTHING)(x, gen()).is_contiguous()


def test_noise_has_the_configured_std():
    x = torch.full((64, 3, 16, 16), 0.5)
    out = Augmenter(AugmentConfig(noise=0.05))(x, gen())
    assert abs((out - x).std().item() - 0.05) < 0.0025
    assert abs((out - x).mean().item()) < 0.002


def test_brightness_and_contrast_are_per_sample_factors():
    x = torch.full((32, 3, 8, 8), 0.5)
    out = Augmenter(AugmentConfig(brightness=0.2))(x, gen())
    per_sample = out.amax(dim=(1, 2, 3))
    assert torch.equal(per_sample, out.amin(dim=(1, 2, 3)))  # one factor per image
    assert per_sample.min() >= 0.4 - 1e-6 and per_sample.max() <= 0.6 + 1e-6 and per_sample.std() > 0.02
    x = 0.25 + 0.5 * batch(n=32)  # in [0.25, 0.75]: contrast in ±0.5 cannot clip
    out = Augmenter(AugmentConfig(contrast=0.5))(x, gen())
    assert torch.allclose(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)  # mean kept
    ratio = (out - out.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.1


def test_cutout_zeroes_one_square_inside_each_image():
    x = torch.ones(32, 3, 16, 12)
    out = Augmenter(AugmentConfig(cutout=5))(x, gen())
    holes = out[:, 0] == 0
    assert torch.equal(holes, (out == 0).all(dim=1))  # same hole in every channel
    assert holes.sum(dim=(1, 2)).tolist() == [25] * 32  # 5 × 5 pixels = 25 / 192 of each image
    rows, cols = holes.any(dim=2), holes.any(dim=1)
    assert rows.sum(dim=1).tolist() == [5] * 32 and cols.sum(dim=1).tolist() == [5] * 32  # a square
    assert len({int(r.nonzero()[0]) for r in rows}) > 3  # at different places


def test_rotation_fill_follows_padding_mode():
    x = torch.full((8, 1, 20, 20), 0.5)
    zeros = Augmenter(AugmentConfig(rotation=45))(x, gen())
    assert (zeros[:, :, 0, 0] < 0.5).float().mean() > 0.5  # corners rotate in from outside: black
    reflect = Augmenter(AugmentConfig(rotation=45, padding_mode="reflect"))(x, gen())
    assert torch.allclose(reflect, x, atol=1e-6)  # a mirror of a flat image is flat


@pytest.mark.parametrize("mode", ["zeros", "reflect", "nearest"])
def test_nearest_fill_repeats_the_border_pixel_as_keras_does(mode):
    # a left-to-right ramp shifted by up to 40%: pixels shifted in repeat the edge column (0 or 1), so every
    # row stays non-decreasing and keeps its end values; a mirror (reflect) or black (zeros) fill breaks that
    x = torch.linspace(0, 1, 16).expand(32, 1, 8, 16).contiguous()
    out = Augmenter(AugmentConfig(translate=0.4, padding_mode=mode))(x, gen())
    monotone = bool((out.diff(dim=3) >= -1e-6).all())  # 1e-6: bilinear weights in fp32
    assert monotone == (mode == "nearest")
    if mode == "nearest":
        # each image shifted right starts with the repeated 0 column, one shifted left ends with the 1s
        assert bool(((out.amin(dim=(1, 2, 3)) == 0) | (out.amax(dim=(1, 2, 3)) == 1)).all())


def test_zoom_and_translate_move_content():
    x = torch.zeros(16, 1, 21, 21)
    x[:, :, 10, 10] = 1  # one bright pixel in the centre
    moved = Augmenter(AugmentConfig(translate=0.2))(x, gen())
    assert (moved[:, 0, 10, 10] < 0.9).all()  # the dot left the centre in every sample...
    assert (moved.sum(dim=(1, 2, 3)) > 0.5).all()  # ...but is still there
    zoomed = Augmenter(AugmentConfig(zoom=0.5))(x, gen())
    assert not torch.equal(zoomed, x)
    assert zoomed.view(16, -1).argmax(dim=1).tolist() == [10 * 21 + 10] * 16  # zoom is about the centre


def test_preview_grid_layout():
    images = (batch(n=5, h=6, w=4) * 255).to(torch.uint8)
    sheet = preview_grid(images, Augmenter(AugmentConfig(hflip=True), flip_p=1), n=3, copies=2)
    assert sheet.shape == (3 * 6, 3 * 4, 3) and sheet.dtype.name == "uint8"
    for r in range(3):
        original = torch.from_numpy(sheet[r * 6:(r + 1) * 6, :4]).permute(2, 0, 1)
        assert torch.equal(original, images[r])
        for k in (1, 2):
            copy = torch.from_numpy(sheet[r * 6:(r + 1) * 6, 4 * k:4 * (k + 1)]).permute(2, 0, 1)
            assert torch.equal(copy, images[r].flip(2))
    grey = preview_grid(images[:, :1], Augmenter(EVERYTHING), n=8, copies=3, seed=1)
    assert grey.shape == (5 * 6, 4 * 4, 1)


@pytest.mark.parametrize(("key", "value", "ok"), [("cutout", 14, True), ("cutout", 15, False), ("cutout", 40, False),
                                                  ("crop_padding", 4, True), ("crop_padding", 100, False)])
def test_settings_that_would_wipe_out_the_images_are_refused(key, value, ok):
    aug = Augmenter(AugmentConfig(**{key: value}))
    if ok:
        aug.check((1, 28, 28))
    else:
        with pytest.raises(CnnlabError, match=rf"data.augment.{key}={value} on 28x28 images .* at most 14"):
            aug.check((1, 28, 28))


def test_an_empty_batch_comes_back_empty():
    x = torch.zeros(0, 3, 8, 8)
    out = Augmenter(EVERYTHING)(x, gen())
    assert out.shape == (0, 3, 8, 8) and out is not x  # a new tensor, as for any batch
