"""Activation maximisation climbs its target, stays in [0, 1], is seeded; layer picking and hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.maximize import default_layers, maximize_classes, maximize_filters, maximize_layers

SHAPE = (1, 16, 16)
NORM = Normalizer((0.4,), (0.25,))  # non-trivial normalisation, so the [0, 1] ↔ model-space map matters
FAST = {"steps": 24, "lr": 0.05}


@pytest.fixture
def model(keras_net: nn.Module) -> nn.Module:
    """The KerasNet of tests/conftest.py: conv2d, batch_normalization, conv2d_1, pool, block.conv, dense."""
    return keras_net


def test_filters_climb_and_return_unit_images(model: nn.Module) -> None:
    res = maximize_filters(model, "block.conv", [0, 3, 5], input_shape=SHAPE, normalizer=NORM, **FAST)
    assert res.images.shape == (3, *SHAPE) and res.images.dtype == torch.float32
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert res.indices == [0, 3, 5] and res.scores.shape == res.initial.shape == (3,)
    assert (res.scores - res.initial).min() > 0.05
    post = maximize_filters(model, "conv2d_1", 4, input_shape=SHAPE, normalizer=NORM, **FAST)
    assert post.indices == [0, 1, 2, 3]
    assert (post.scores >= post.initial).all() and post.scores.sum() > 2 * post.initial.sum()


def test_maximisation_is_seeded(model: nn.Module) -> None:
    def run(seed: int) -> torch.Tensor:
        return maximize_filters(model, "conv2d", [1, 2], input_shape=SHAPE, normalizer=NORM, seed=seed,
                                steps=8).images

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_classes_climb_above_random_images(model: nn.Module) -> None:
    res = maximize_classes(model, [2, 0], input_shape=SHAPE, normalizer=NORM, steps=32, lr=0.05)
    assert res.images.shape == (2, *SHAPE) and res.images.min() >= 0 and res.images.max() <= 1
    assert (res.scores > res.initial).all()
    noise = NORM((torch.rand((16, *SHAPE), generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8))
    with torch.no_grad():
        random_logits = model(noise)
    assert (res.scores > random_logits[:, [2, 0]].max(dim=0).values).all()
    with torch.no_grad():  # the reported scores are the model's logits on the returned images
        direct = model(NORM((res.images * 255).round().to(torch.uint8)))[[0, 1], [2, 0]]
    assert torch.allclose(direct, res.scores, atol=0.05 * res.scores.abs().max().item())


def test_default_layers(keras_net: nn.Module) -> None:
    def convs(n: int) -> nn.Module:
        return nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(n)], nn.Flatten(), nn.LazyLinear(2))

    assert default_layers(convs(9)) == ["0", "2", "4", "6"]
    assert default_layers(convs(4)) == ["0", "2", "3"]
    assert default_layers(convs(1)) == ["0"]
    assert default_layers(keras_net, SHAPE) == ["conv2d", "block.conv"]
    with pytest.raises(CnnlabError, match="no Conv2d"):
        default_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_maximize_layers_feeds_every_default_layer(model: nn.Module) -> None:
    out = maximize_layers(model, filters=2, input_shape=SHAPE, normalizer=NORM, steps=4)
    assert list(out) == ["conv2d", "block.conv"]
    assert all(r.images.shape == (2, *SHAPE) for r in out.values())


def test_user_mistakes_raise(model: nn.Module) -> None:
    kw = {"input_shape": SHAPE, "normalizer": NORM, "steps": 2}
    with pytest.raises(CnnlabError, match=r"unknown layer 'conv9'.*conv2d, conv2d_1, block\.conv"):
        maximize_filters(model, "conv9", [0], **kw)
    with pytest.raises(CnnlabError, match=r"'dense'.*\(N, C, H, W\)"):
        maximize_filters(model, "dense", [0], **kw)
    with pytest.raises(CnnlabError, match=r"filter of layer 'conv2d' 8 out of range; valid: 0\.\.7"):
        maximize_filters(model, "conv2d", [0, 8], **kw)
    with pytest.raises(CnnlabError, match=r"class 3 out of range; valid: 0\.\.2"):
        maximize_classes(model, [3], **kw)


def test_model_state_is_restored(model: nn.Module) -> None:
    model.train()
    model.dropout.eval()
    model.conv2d.bias.requires_grad_(False)
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    maximize_filters(model, "conv2d_1", [0], input_shape=SHAPE, normalizer=NORM, steps=2)
    maximize_classes(model, [1], input_shape=SHAPE, normalizer=NORM, steps=2)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(("kwargs", "match"), [({"steps": 0}, r"`steps` 0 \(at least 1\)"),
                                               ({"lr": -0.1}, r"`lr` -0.1 \(a positive step\)"),
                                               ({"jitter": 16}, r"`jitter` 16 \(0..15 pixels on 16-pixel"),
                                               ({"blur_sigma": -1}, r"`blur_sigma` -1")])
def test_settings_are_checked_against_the_input(model: nn.Module, kwargs, match) -> None:
    with pytest.raises(CnnlabError, match=f"activation maximisation cannot use {match}"):
        maximize_filters(model, "conv2d", [0], input_shape=SHAPE, normalizer=NORM, **{**FAST, **kwargs})
