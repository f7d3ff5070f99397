"""Heat maps find a planted discriminative patch; layer handling, errors and model state hygiene."""

from __future__ import annotations

import pytest
import torch
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

SIZE = 16  # the images of the patch_net fixture (tests/conftest.py)
PATCH = (slice(3, 7), slice(9, 13))  # rows, cols of the 4×4 bright patch that defines class 1
NORM = Normalizer()


@pytest.fixture
def trained(patch_net) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The PatchNet of tests/conftest.py, trained until it tells the patch images apart."""
    _, images, labels = patch_net
    assert images.shape[-1] == SIZE and (images[labels == 1][:, :, PATCH[0], PATCH[1]] == 255).all()
    return patch_net


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


def test_occlusion_sizes_are_checked_against_the_image(trained) -> None:
    model, images, labels = trained
    x = NORM(images[:2])
    for kwargs, match in (({"window": 17}, r"`window` 17x17 does not fit 16x16 images; use 1..16"),
                          ({"window": 0}, r"`window` 0x0 does not fit"), ({"window": -3}, "does not fit"),
                          ({"stride": 0}, r"`stride` 0x0 must be at least 1")):
        with pytest.raises(CnnlabError, match=match):
            occlusion(model, x, labels[:2], **kwargs)


def test_occlusion_default_window_fits_a_one_pixel_image() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2)).eval()
    torch.manual_seed(0)
    heat = occlusion(model, torch.ones(3, 1, 1, 1), torch.tensor([0, 1, 0]))  # used to be Captum's assert
    assert heat.shape == (3, 1, 1) and torch.isfinite(heat).all()
