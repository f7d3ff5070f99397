import numpy as np
import pytest
import torch

from cnnlab.data.tensors import IMAGENET, ImageData, Normalizer, batches, constant_channels, split
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


def test_row_view_reads_its_rows_lazily_and_stays_on_the_cpu():
    from cnnlab.data.tensors import RowView

    base = torch.arange(6 * 4, dtype=torch.uint8).reshape(6, 1, 2, 2)
    view = RowView(base, torch.tensor([4, 1, 3]))
    assert len(view) == 3 and view.shape == (3, 1, 2, 2) and view.dtype == torch.uint8
    assert torch.equal(view[0], base[4]) and torch.equal(view[1:], base[[1, 3]])
    picked = view.select(torch.tensor([2, 0]))
    assert isinstance(picked, RowView) and torch.equal(picked[:], base[[3, 4]])
    assert view.to("cpu") is view  # no copy on the CPU
    moved = view.to("meta")  # any other device gets the gathered rows
    assert isinstance(moved, torch.Tensor) and moved.device.type == "meta" and moved.shape == (3, 1, 2, 2)
    data = ImageData(base, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"])
    lazy = data.subset([5, 4, 3], copy=False).subset([2, 0], copy=False)  # a view of a view: rows 3 and 5
    assert isinstance(lazy.images, RowView) and torch.equal(lazy.images[:], base[[3, 5]])


def test_class_counts_include_classes_without_images():
    data = ImageData(torch.zeros(3, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 0, 1]), ["a", "b", "c"])
    assert data.class_counts() == [2, 1, 0]


def test_per_channel_constants_for_numpy_from_unit_and_denormalize():
    norm = Normalizer((0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    scale, shift = norm.numpy_scale_shift(3)  # x / 255 / std - mean / std
    np.testing.assert_allclose(scale.ravel(), [1 / 127.5, 1 / 63.75, 1 / 255], rtol=1e-7)  # float32
    np.testing.assert_array_equal(shift.ravel(), [1.0, 1.0, 0.0])
    assert scale.shape == shift.shape == (1, 3, 1, 1)
    unit = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1).expand(2, 3, 4, 4).contiguous()
    out = norm.from_unit(unit)
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.25]))  # (1 - .5)/.5, (.5 - .25)/.25, .25/1
    assert out.is_contiguous() and not norm.from_unit(unit, channels_last=True).is_contiguous()
    assert norm.from_unit(unit, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    back = norm.denormalize(torch.tensor([1.0, -3.0, 2.0]).view(1, 3, 1, 1))  # 1.0, -0.5 → 0, 2.0 → 1
    assert back.ravel().tolist() == [1.0, 0.0, 1.0]
    assert norm.denormalize(torch.tensor([0.2, 1.0, 0.5]).view(1, 3, 1, 1)).ravel().tolist() == pytest.approx(
        [0.6, 0.5, 0.5], abs=1e-7)  # float32 arithmetic
    with pytest.raises(CnnlabError, match="3 means / 3 stds for 1-channel images"):
        norm.numpy_scale_shift(1)


def test_a_channel_varying_by_one_grey_level_in_64800_pixels_is_not_constant():
    x = torch.zeros(1, 1, 240, 270, dtype=torch.uint8)  # 64,800 pixels
    x[0, 0, 0, 0] = 1  # std = 1 / sqrt(64800) = 0.003928 grey levels, above the 1/255 = 0.003922 threshold
    data = ImageData(x, torch.tensor([0]), ["a"])
    assert constant_channels(data) == []
    x[0, 0, 0, 0] = 0
    assert constant_channels(data) == [0]


def test_normalizer_dict_round_trips_through_the_constructor():
    norm = Normalizer((0.5, 0.25), (0.2, 0.1))
    assert norm.to_dict() == {"mean": [0.5, 0.25], "std": [0.2, 0.1]}
    assert Normalizer(**{k: tuple(v) for k, v in norm.to_dict().items()}) == norm


def test_statistics_come_from_the_first_10000_images():
    # 10,001 one-pixel images, 10,000 black then one white: the default sample (the first 10,000) is constant,
    # so fit gives mean 0 and std 1 (a constant channel is only shifted) and channel 0 is named constant
    images = torch.zeros(10_001, 1, 1, 1, dtype=torch.uint8)
    images[-1] = 255
    data = ImageData(images, torch.zeros(10_001, dtype=torch.long), ("a",))
    assert Normalizer.fit(data) == Normalizer((0.0,), (1.0,))
    assert constant_channels(data) == [0]
    assert Normalizer.fit(data, max_images=10_001).mean == pytest.approx((1 / 10_001,))  # all of them: not constant
    assert constant_channels(data, max_images=10_001) == []


def test_the_constants_follow_the_inputs_device():
    # the "meta" device stands for a GPU here: constants left on the CPU could not meet its tensors
    n = Normalizer((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = torch.empty(2, 3, 4, 4, device="meta")
    assert n.denormalize(x).device.type == "meta" and n.from_unit(x).device.type == "meta"
    assert n(torch.empty(2, 3, 4, 4, dtype=torch.uint8, device="meta")).device.type == "meta"


def test_split_defaults_names_and_edges():
    data = ImageData(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10) % 2, ("a", "b"), "d")
    train, val = split(data, 2, seed=0)  # 2 is the smallest count
    assert (len(train), len(val)) == (8, 2) and (train.name, val.name) == ("d[train]", "d[val]")
    assert type(train.images) is torch.Tensor and type(val.images) is torch.Tensor  # copies by default
    from cnnlab.data.tensors import RowView

    assert all(isinstance(p.images, RowView) for p in split(data, 2, seed=0, copy=False))  # or lazy views
    assert [len(p) for p in split(data, 0.1, seed=0)] == [9, 1]  # a fraction that holds out one image
    with pytest.raises(CnnlabError, match=r"nor a whole count of at least 2 images \(10000 holds out 10,000\)$"):
        split(data, 1, seed=0)
    with pytest.raises(CnnlabError, match="neither a fraction"):
        split(data, 0, seed=0)


def test_subset_keeps_names_indices_and_one_level_of_view():
    from cnnlab.data.tensors import RowView

    base = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    data = ImageData(base, torch.zeros(6, dtype=torch.long), ("a",), "d")
    sub = data.subset(np.array([5, 3, 1], dtype=np.int32))
    assert sub.name == "d" and sub.indices.dtype == torch.long and sub.indices.tolist() == [5, 3, 1]
    assert data.subset([0], "named").name == "named"
    assert sub.subset([1]).indices.tolist() == [3]  # positions in the original data, through two subsets
    lazy = data.subset([5, 4, 3], copy=False).subset([2, 0], copy=False)
    assert isinstance(lazy.images, RowView) and lazy.images.base is base  # rows of the data, not a view of a view


def test_to_keeps_everything_but_the_device():
    data = ImageData(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0]), ("a", "b"), "d")
    sub = data.subset([2, 0])
    moved = sub.to("meta")
    assert moved.images.device.type == "meta" and moved.labels.device.type == "meta"
    assert (moved.name, moved.classes, moved.indices.tolist()) == ("d", ("a", "b"), [2, 0])


def test_batches_shuffle_with_the_generator_only():
    data = ImageData(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.zeros(100, dtype=torch.long), ("a",))

    def order(seed):
        torch.manual_seed(seed)  # the global stream must not matter
        return torch.cat([x.flatten() for x, _ in batches(data, 32, shuffle=True,
                                                          generator=torch.Generator().manual_seed(7))]).tolist()

    first = order(1)
    assert first == order(2) and sorted(first) == list(range(100)) and first != list(range(100))


def test_shard_drops_the_remainder_so_every_rank_gets_as_many():
    from cnnlab.data.tensors import shard

    order = torch.arange(10)
    assert [shard(order, r, 3).tolist() for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


def test_normalizer_default_layout_and_checks():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert IMAGENET(x).is_contiguous()  # NCHW unless channels_last is asked for
    with pytest.raises(CnnlabError, match="2 means / 1 stds for 3-channel"):
        Normalizer((0.1, 0.2), (0.3,))(x)
    with pytest.raises(CnnlabError, match=r"a positive number \(a constant channel has std 0: use data.normalize: unit, or fit it again\)$"):
        Normalizer((0.5,), (0.0,))
    n = Normalizer((0.5,), (0.25,))
    n(torch.zeros(1, 1, 2, 2, dtype=torch.uint8, device="meta"))  # constants kept per device:
    assert n(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)).tolist() == [[[[2.0, 2.0], [2.0, 2.0]]]]  # CPU's own
    x = torch.rand(1, 1, 2, 2, requires_grad=True)  # attributions differentiate through the normaliser
    n.from_unit(x).sum().backward()
    assert x.grad.tolist() == [[[[4.0, 4.0], [4.0, 4.0]]]]  # d/dx (x - 0.5) / 0.25


def test_labels_must_match_the_images_and_constants_stay_float32():
    with pytest.raises(ValueError, match=r"^labels shape \(2,\) != \(3,\)$"):
        ImageData(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), ("a",))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a notebook's choice must not change the model's input type
    try:
        n = Normalizer((0.5,), (0.25,))
        assert n(torch.zeros(1, 1, 2, 2, dtype=torch.uint8)).dtype == torch.float32
        assert all(t.dtype == torch.float32 for t in n._consts(torch.device("cpu"), 1))
    finally:
        torch.set_default_dtype(previous)
