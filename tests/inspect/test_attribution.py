"""Heat maps find a planted discriminative patch; layer handling, errors and model state hygiene."""

from __future__ import annotations

import matplotlib.image as plt_image
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.data.tensors import Normalizer
from cnnlab.errors import CnnlabError
from cnnlab.inspect.attribution import (
    conv_layer_names,
    gradcam,
    integrated_gradients,
    occlusion,
    saliency,
    select_correct,
)
from cnnlab.plots.attribution import plot_overlays
from cnnlab.plots.common import save_figure

SIZE = 16
PATCH = (slice(3, 7), slice(9, 13))  # rows, cols of the 4×4 bright patch that defines class 1
NORM = Normalizer()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class PatchNet(nn.Module):
    """Conv + BN + pool, a nested conv block, global average pool, dropout, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = Block()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.pool(self.block(self.features(x))).flatten(1)))


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 160, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 1, :, PATCH[0], PATCH[1]] = 255
    return images, labels


@pytest.fixture(scope="module")
def trained() -> tuple[PatchNet, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = PatchNet()
    images, labels = make_data(512, seed=1)
    x = NORM(images)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(120):
        idx = torch.arange(step * 64, step * 64 + 64) % 512
        loss = nn.functional.cross_entropy(model(x[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    test_images, test_labels = make_data(64, seed=2)
    with torch.no_grad():
        acc = (model.eval()(NORM(test_images)).argmax(1) == test_labels).float().mean().item()
    assert acc > 0.95, f"test model did not learn the patch (accuracy {acc:.2f})"
    return model, test_images, test_labels


def patch_images(trained, n: int = 8) -> torch.Tensor:
    _, images, labels = trained
    return NORM(images[labels == 1][:n])


def patch_mask(dilate: int = 0) -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    r, c = PATCH
    mask[max(0, r.start - dilate):r.stop + dilate, max(0, c.start - dilate):c.stop + dilate] = True
    return mask


def mass_ratio(heat: torch.Tensor) -> torch.Tensor:
    """Per image: mean heat inside the patch / mean heat outside it."""
    inside = patch_mask()
    return heat[:, inside].mean(1) / heat[:, ~inside].mean(1).clamp_min(1e-12)


def test_select_correct_picks_only_correct_and_is_seeded(trained) -> None:
    model, images, labels = trained
    images = images.clone()
    labels = labels.clone()
    labels[:4] = 1 - labels[:4]  # four deliberately wrong labels
    idx = select_correct(model, images, labels, NORM, 10, seed=3)
    assert idx.numel() == 10 and idx.dtype == torch.long
    assert not set(idx.tolist()) & {0, 1, 2, 3}
    assert torch.equal(idx, select_correct(model, images, labels, NORM, 10, seed=3))
    assert select_correct(model, images, labels, NORM, 1000).numel() <= 60


def test_occlusion_peaks_on_the_patch(trained) -> None:
    model = trained[0]
    x = patch_images(trained)
    heat = occlusion(model, x, 1)
    assert heat.shape == (8, SIZE, SIZE)
    near = patch_mask(dilate=1).flatten()
    assert near[heat.flatten(1).argmax(1)].all()


def test_saliency_gradcam_and_ig_concentrate_on_the_patch(trained) -> None:
    model = trained[0]
    x = patch_images(trained)
    for name, heat in [("saliency", saliency(model, x, 1)), ("gradcam", gradcam(model, x, 1)),
                       ("ig", integrated_gradients(model, x, 1, steps=16))]:
        assert heat.shape == (8, SIZE, SIZE), name
        assert (mass_ratio(heat) > 1.5).all(), name
    assert (saliency(model, x, 1) >= 0).all() and (gradcam(model, x, 1) >= 0).all()


def test_gradcam_layers_nested_names_and_errors(trained) -> None:
    model = trained[0]
    x = patch_images(trained, 2)
    assert torch.allclose(gradcam(model, x, [1, 1]), gradcam(model, x, 1, layer="block.conv"))
    assert gradcam(model, x, 1, layer="features.3").shape == (2, SIZE, SIZE)  # max-pool output is spatial
    with pytest.raises(CnnlabError, match=r"unknown layer 'nope'.*features\.0, block\.conv"):
        gradcam(model, x, 1, layer="nope")
    with pytest.raises(CnnlabError, match=r"'head'.*spatial.*features\.0, block\.conv"):
        gradcam(model, x, 1, layer="head")


def test_bad_targets_raise(trained) -> None:
    model = trained[0]
    x = patch_images(trained, 2)
    with pytest.raises(CnnlabError, match=r"target class 2 out of range; valid: 0\.\.1"):
        saliency(model, x, 2)
    with pytest.raises(CnnlabError, match="3 target classes for 2 images"):
        occlusion(model, x, [0, 1, 1])
    with pytest.raises(CnnlabError, match="normalizer"):
        saliency(model, torch.zeros(2, 1, SIZE, SIZE, dtype=torch.uint8), 1)


def test_model_state_is_restored(trained) -> None:
    model = trained[0]
    x = patch_images(trained, 2)
    model.train()
    model.features[1].eval()  # a mixed state must come back exactly
    model.features[0].weight.requires_grad_(False)
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for fn in (occlusion, saliency, integrated_gradients, gradcam):
            fn(model, x, 1)
        assert {name: m.training for name, m in model.named_modules()} == flags
        assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
        assert all(p.grad is None for p in model.parameters())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
        assert not x.requires_grad
    finally:
        model.features[0].weight.requires_grad_(True)
        model.eval()


def test_conv_layer_names_follow_execution_order() -> None:
    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Conv2d(4, 4, 3)  # registered first, runs second
            self.early = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.late(self.early(x)).mean(dim=(2, 3)))

    model = Swapped()
    assert conv_layer_names(model) == ["late", "early"]
    assert conv_layer_names(model, torch.zeros(1, 1, 8, 8)) == ["early", "late"]
    heat = gradcam(model, torch.randn(2, 1, 8, 8), 0)  # default layer = last executed conv ('late')
    assert heat.shape == (2, 8, 8)


def test_plot_overlays_has_a_panel_per_image_and_method(trained, tmp_path) -> None:
    model, images, labels = trained
    u8 = images[labels == 1][:3]
    x = NORM(u8)
    heats = {"occlusion": occlusion(model, x, 1), "saliency": saliency(model, x, 1),
             "IG": integrated_gradients(model, x, 1, steps=8), "Grad-CAM": gradcam(model, x, 1)}
    fig = plot_overlays(u8, heats, titles=["patch"] * 3)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 * 5
    png = plt_image.imread(save_figure(fig, tmp_path / "overlays.png"))
    assert png[..., :3].std() > 0.05  # not blank
    assert len(plot_overlays(NORM.denormalize(x), heats["saliency"], method="saliency").axes) == 3 * 2
    with pytest.raises(ValueError, match="shape"):
        plot_overlays(u8, heats["saliency"][:2])
