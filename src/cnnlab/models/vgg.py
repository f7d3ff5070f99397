"""VGG-11/13/16/19 with and without BatchNorm (Simonyan & Zisserman 2014), with a Keras-style head.

The conv stack (``features``) is torchvision's. The head flattens the last feature map at the actual
input size (no adaptive pooling, as Keras's ``VGG16(include_top=True)`` and the tutorials' models do)
and feeds it to FC 4096 → FC 4096 → FC classes, keeping torchvision's ``classifier`` indices 0 / 3 / 6
(ReLU + Dropout in between). At 224x224 the map is 512x7x7, the first FC is 25088 wide, and every key
and shape equals torchvision's, so its ImageNet weights load unchanged. At other sizes the first FC is
``512 · (H // 32) · (W // 32)`` wide: at 50x50 it is 512, and VGG-16 with 2 classes has Keras's
33,605,442 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import (
    LR_WITH_BN,
    LR_WITHOUT_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)

# Conv widths per block; "M" = 2x2 max-pool (stride 2). Configurations A, B, D, E of the paper.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
# Five floor-halving pools: the last map is (H // 32) x (W // 32), so 32 px is the smallest input.
MIN_SIDE = 32


def make_features(cfg: list[int | str], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """The conv stack: 3x3 convs (padding 1) + ReLU, optional BatchNorm, 2x2 max-pools at "M"."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` → flatten → ``classifier`` (FC 4096, ReLU, Dropout, FC 4096, ReLU, Dropout, FC classes).

    Args:
        features: the conv stack, ending in a 512-channel map.
        flat_features: size of the flattened last map, 512 · (H // 32) · (W // 32).
        num_classes: outputs of ``classifier.6``.
        dropout: dropout after each hidden FC layer.
    """

    def __init__(self, features: nn.Sequential, flat_features: int, num_classes: int = 1000,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Linear(flat_features, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, H // 32, W // 32)
        return self.classifier(torch.flatten(x, 1))


def _meta(weights_file: str) -> ModelMeta:
    bn = "_bn-" in weights_file  # BatchNorm variants train at Adam's usual rate; plain VGG collapses there
    return ModelMeta((3, 224, 224), head="classifier.6", first_conv="features.0",
                     weights=torchvision_weights(weights_file), min_side=MIN_SIDE,
                     lr=LR_WITH_BN if bn else LR_WITHOUT_BN)


def _vgg(arch: str, num_classes: int, input_shape: tuple[int, int, int], dropout: float,
         kw: dict) -> nn.Module:
    reject_options(arch, kw, ("dropout",))
    c, h, w = check_input(arch, input_shape, min_side=MIN_SIDE)
    depth, batch_norm = arch.removesuffix("_bn"), arch.endswith("_bn")
    features = make_features(CONFIGS[depth], c, batch_norm)
    model = VGG(features, 512 * (h // 32) * (w // 32), num_classes, dropout)
    return model


@register_model(_meta("vgg11-8a719046.pth"))
def vgg11(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-11 (config A; Keras-style flatten head; 132.9M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg11", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg11_bn-6002323d.pth"))
def vgg11_bn(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-11 with BatchNorm (Keras-style flatten head; 132.9M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg11_bn", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg13-19584684.pth"))
def vgg13(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-13 (config B; Keras-style flatten head; 133.0M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg13", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg13_bn-abd245e5.pth"))
def vgg13_bn(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-13 with BatchNorm (Keras-style flatten head; 133.1M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg13_bn", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg16-397923af.pth"))
def vgg16(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-16 (config D; Keras-style flatten head; 138.4M params at 224x224, 33.6M at 50x50x3/2 classes).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg16", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg16_bn-6c64b313.pth"))
def vgg16_bn(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-16 with BatchNorm (Keras-style flatten head; 138.4M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg16_bn", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg19-dcbb9e9d.pth"))
def vgg19(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-19 (config E; Keras-style flatten head; 143.7M params at 224x224, 38.9M at 50x50x3/2 classes).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg19", num_classes, input_shape, dropout, kw)


@register_model(_meta("vgg19_bn-c79401a0.pth"))
def vgg19_bn(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """VGG-19 with BatchNorm (Keras-style flatten head; 143.7M params at 224x224).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 32. The first FC layer's width follows it.
        dropout: dropout after each hidden FC layer.
        **kw: rejected with a one-line error (unknown option).
    """
    return _vgg("vgg19_bn", num_classes, input_shape, dropout, kw)
