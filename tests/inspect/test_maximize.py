"""Activation maximisation climbs its target, stays in [0, 1], is seeded; layer picking and hygiene."""

from __future__ import annotations

import matplotlib.image as plt_image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.maximize import default_layers, maximize_classes, maximize_filters, maximize_layers
from cnnlab.plots.attribution import plot_class_maximized, plot_maximized, stretch
from cnnlab.plots.common import save_figure

SHAPE = (1, 16, 16)
NORM = Normalizer((0.4,), (0.25,))  # non-trivial normalisation, so the [0, 1] ↔ model-space map matters
FAST = {"steps": 24, "lr": 0.05}


class Conv2D(nn.Conv2d):
    """Keras-style conv: the activation is part of the layer, its output is post-ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class KerasNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv2d = Conv2D(1, 8, 3, padding=1)
        self.batch_normalization = nn.BatchNorm2d(8)
        self.conv2d_1 = Conv2D(8, 8, 3, padding=1)
        self.max_pooling2d = nn.MaxPool2d(2)
        self.block = Block()
        self.dropout = nn.Dropout(0.3)
        self.dense = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pooling2d(self.conv2d_1(self.batch_normalization(self.conv2d(x))))
        return self.dense(self.dropout(self.block(x).flatten(1)))


@pytest.fixture
def model() -> KerasNet:
    torch.manual_seed(0)
    return KerasNet().eval()


def test_filters_climb_and_return_unit_images(model: KerasNet) -> None:
    res = maximize_filters(model, "block.conv", [0, 3, 5], input_shape=SHAPE, normalizer=NORM, **FAST)
    assert res.images.shape == (3, *SHAPE) and res.images.dtype == torch.float32
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert res.indices == [0, 3, 5] and res.scores.shape == res.initial.shape == (3,)
    assert (res.scores - res.initial).min() > 0.05
    post = maximize_filters(model, "conv2d_1", 4, input_shape=SHAPE, normalizer=NORM, **FAST)
    assert post.indices == [0, 1, 2, 3]
    assert (post.scores >= post.initial).all() and post.scores.sum() > 2 * post.initial.sum()


def test_maximisation_is_seeded(model: KerasNet) -> None:
    def run(seed: int) -> torch.Tensor:
        return maximize_filters(model, "conv2d", [1, 2], input_shape=SHAPE, normalizer=NORM, seed=seed,
                                steps=8).images

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_classes_climb_above_random_images(model: KerasNet) -> None:
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


def test_default_layers() -> None:
    def convs(n: int) -> nn.Module:
        return nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(n)], nn.Flatten(), nn.LazyLinear(2))

    assert default_layers(convs(9)) == ["0", "2", "4", "6"]
    assert default_layers(convs(4)) == ["0", "2", "3"]
    assert default_layers(convs(1)) == ["0"]
    assert default_layers(KerasNet(), SHAPE) == ["conv2d", "block.conv"]
    with pytest.raises(CnnlabError, match="no Conv2d"):
        default_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_maximize_layers_feeds_every_default_layer(model: KerasNet) -> None:
    out = maximize_layers(model, filters=2, input_shape=SHAPE, normalizer=NORM, steps=4)
    assert list(out) == ["conv2d", "block.conv"]
    assert all(r.images.shape == (2, *SHAPE) for r in out.values())


def test_user_mistakes_raise(model: KerasNet) -> None:
    kw = {"input_shape": SHAPE, "normalizer": NORM, "steps": 2}
    with pytest.raises(CnnlabError, match=r"unknown layer 'conv9'.*conv2d, conv2d_1, block\.conv"):
        maximize_filters(model, "conv9", [0], **kw)
    with pytest.raises(CnnlabError, match=r"'dense'.*\(N, C, H, W\)"):
        maximize_filters(model, "dense", [0], **kw)
    with pytest.raises(CnnlabError, match=r"filter of layer 'conv2d' 8 out of range; valid: 0\.\.7"):
        maximize_filters(model, "conv2d", [0, 8], **kw)
    with pytest.raises(CnnlabError, match=r"class 3 out of range; valid: 0\.\.2"):
        maximize_classes(model, [3], **kw)


def test_model_state_is_restored(model: KerasNet) -> None:
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


def test_plots_have_a_panel_per_image(model: KerasNet, tmp_path) -> None:
    kw = {"input_shape": SHAPE, "normalizer": NORM, "steps": 8}
    per_layer = {"conv2d": maximize_filters(model, "conv2d", 3, **kw),
                 "block.conv": maximize_filters(model, "block.conv", [1, 4], **kw)}
    fig = plot_maximized(per_layer)
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    assert plt_image.imread(save_figure(fig, tmp_path / "filters.png"))[..., :3].std() > 0.05
    assert len(plot_maximized({"conv2d": per_layer["conv2d"].images}).axes) == 3
    classes = maximize_classes(model, [0, 2], **kw)
    fig = plot_class_maximized(classes, ["cat", "dog", "frog"])
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("frog")
    assert plt_image.imread(save_figure(fig, tmp_path / "classes.png"))[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="2 class names for 3 images"):
        plot_class_maximized(per_layer["conv2d"].images, ["a", "b"])


def test_stretch_expands_faint_patterns_but_keeps_flat_images() -> None:
    low_contrast = 0.5 + 0.15 * torch.linspace(-1, 1, 64).view(1, 8, 8)
    out = stretch(low_contrast, low=0, high=100)
    assert out.min() == 0 and out.max() == 1
    faint = stretch(0.5 + 0.02 * torch.linspace(-1, 1, 64).view(1, 8, 8), low=0, high=100)
    assert abs(faint.min() - 0.4) < 1e-3 and abs(faint.max() - 0.6) < 1e-3  # gain capped at 5×
    assert np.allclose(stretch(torch.ones(3, 4, 4)), 1) and np.allclose(stretch(torch.zeros(1, 4, 4)), 0)
    tiny = stretch(0.01 * torch.rand(1, 8, 8))  # near-black noise: at most 5× gain, stays dark
    assert tiny.max() <= 0.3
