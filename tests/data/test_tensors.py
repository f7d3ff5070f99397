import pytest
import torch

from cnnlab.data.tensors import IMAGENET, ImageData, Normalizer, batches, split
from cnnlab.errors import CnnlabError


def test_split_is_seeded_disjoint_and_complete(toy):
    a_train, a_val = split(toy, 0.25, seed=3)
    b_train, b_val = split(toy, 60, seed=3)
    assert len(a_val) == 60 and len(a_train) == 180
    assert torch.equal(a_val.indices, b_val.indices)
    assert sorted(a_train.indices.tolist() + a_val.indices.tolist()) == list(range(len(toy)))
    assert not torch.equal(split(toy, 0.25, seed=4)[1].indices, a_val.indices)
    with pytest.raises(CnnlabError, match="holds out 240 of 240 images, leaving 0 to train on"):
        split(toy, len(toy), seed=0)


def test_normalizer_matches_the_formula():
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    assert torch.allclose(Normalizer()(x), x.float() / 255)
    n = Normalizer((0.5,), (0.25,))
    assert torch.allclose(n(x), (x.float() / 255 - 0.5) / 0.25)
    assert torch.allclose(n.denormalize(n(x)), x.float() / 255)
    assert torch.allclose(n.from_unit(x.float() / 255), n(x))
    rgb = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    assert IMAGENET(rgb, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(CnnlabError, match="3 means / 3 stds for 1-channel"):
        IMAGENET(x)


def test_fit_normalizer(toy):
    n = Normalizer.fit(toy)
    z = n(toy.images)
    assert abs(z.mean().item()) < 1e-4 and abs(z.std().item() - 1) < 1e-2


def test_batches_cover_every_image_once(toy):
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in batches(toy, 7, shuffle=True, generator=g)])
    assert len(seen) == len(toy) and sorted(seen.tolist()) == sorted(toy.labels.tolist())
    assert sum(len(y) for _, y in batches(toy, 7, drop_last=True)) == len(toy) // 7 * 7


def test_image_data_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.long), ("a",))


def test_a_constant_channel_is_shifted_not_divided_by_zero():
    from cnnlab.data.tensors import constant_channels

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (20, 3, 4, 4), generator=g, dtype=torch.uint8)
    rgb[:, 2] = 0  # a blue channel that is always 0
    data = ImageData(rgb, torch.zeros(20, dtype=torch.long), ("x",))
    norm = Normalizer.fit(data)
    assert constant_channels(data) == [2]
    assert norm.std[2] == 1.0 and norm.mean[2] == 0.0 and min(norm.std[:2]) > 0.2
    out = norm(rgb)
    assert torch.isfinite(out).all() and torch.equal(out[:, 2], torch.zeros(20, 4, 4))


@pytest.mark.parametrize(("mean", "std", "match"), [
    ((0.5,), (0.0,), "std of channel 0 is 0.0; a std must be a positive"),
    ((0.1, 0.2), (0.3, float("nan")), "std of channel 1 is nan"),
    ((0.1, 0.2), (0.3, -1.0), "std of channel 1 is -1.0"),
    ((float("inf"),), (1.0,), "mean of channel 0 is inf"),
])
def test_impossible_statistics_are_refused(mean, std, match):
    with pytest.raises(CnnlabError, match=match):
        Normalizer(mean, std)


def test_imagenet_statistics_apply_per_channel():
    from cnnlab.data.tensors import IMAGENET

    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)  # white: (1 - mean) / std per channel
    want = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert IMAGENET(x)[0, :, 0, 0].tolist() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(("val", "match"), [
    (1.0, "neither a fraction in \\(0, 1\\)"), (1.5, "neither a fraction"), (-0.2, "neither a fraction"),
    (5999, "holds out 5,999 of 6,000 images, leaving 1 to train on; leave at least 2"),
    (0.00001, "holds out no image of 6,000; hold out at least 1"),
])
def test_validation_splits_that_cannot_train_are_refused(val, match):
    data = ImageData(torch.zeros(6000, 1, 2, 2, dtype=torch.uint8), torch.zeros(6000, dtype=torch.long), ("x",))
    with pytest.raises(CnnlabError, match=match):
        split(data, val, seed=0)


def test_fractions_and_counts_split_as_written():
    data = ImageData(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), torch.arange(100) % 2, ("a", "b"))
    assert [len(p) for p in split(data, 0.25, seed=0)] == [75, 25]
    assert [len(p) for p in split(data, 10.0, seed=0)] == [90, 10]
    assert [len(p) for p in split(data, 98, seed=0)] == [2, 98]


def test_fit_is_per_channel_on_three_distinct_channels():
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[:, 0] = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(4, 1, 1)  # mean 0.5, std 0.5345
    x[:, 1] = 51  # constant 0.2: std 0 → 1
    x[:, 2] = torch.tensor([102, 102, 204, 204], dtype=torch.uint8).view(4, 1, 1)  # mean 0.6
    norm = Normalizer.fit(ImageData(x, torch.zeros(4, dtype=torch.long), ("a",)))
    # unbiased std over the 16 values of channel 0 (8 zeros, 8 ones): sqrt(16 * 0.25 / 15)
    assert norm.mean == pytest.approx((0.5, 0.2, 0.6), abs=1e-6)
    assert norm.std == pytest.approx(((16 * 0.25 / 15) ** 0.5, 1.0, (16 * 0.04 / 15) ** 0.5), abs=1e-6)
    out = norm(x)
    # a constant channel is only shifted (to 0 up to float32 rounding of 51 * (1/255) - 0.2)
    assert out[:, 1].abs().max().item() < 1e-7
    assert out[:, 0].mean().item() == pytest.approx(0.0, abs=1e-6) and out[:, 2].mean().item() == pytest.approx(0.0, abs=1e-6)
