"""AlexNet, the single-tower "one weird trick" variant (Krizhevsky 2014), laid out like torchvision's.

Module names, registration order and tensor shapes equal torchvision's, so its published ImageNet weights
load key for key. As in torchvision, an adaptive average pool brings the last map to 6x6 whatever the
input size, so the 9216-wide first FC layer stays the same.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import (
    LR_WITHOUT_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)

# 11x11/4 conv (padding 2) then three 3x3/2 max-pools without padding: 63 → 15 → 7 → 3 → 1.
# At 62 the last max-pool gets a 2x2 map and has no output.
MIN_SIDE = 63


class AlexNet(nn.Module):
    """Five convs (64-192-384-256-256) with three max-pools → 6x6 pool → FC 4096 → FC 4096 → FC classes.

    Args:
        num_classes: outputs of ``classifier.6``.
        in_channels: input channels.
        dropout: dropout before each of the first two FC layers.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))


@register_model(ModelMeta((3, 224, 224), head="classifier.6", first_conv="features.0",
                          weights=torchvision_weights("alexnet-owt-7be5be79.pth"), min_side=MIN_SIDE,
                          lr=LR_WITHOUT_BN))
def alexnet(
    *, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224), dropout: float = 0.5, **kw
) -> nn.Module:
    """AlexNet (torchvision's one-tower variant, 61.1M params; inputs ≥ 63x63).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; H, W ≥ 63.
        dropout: dropout before each of the first two FC layers.
        **kw: rejected with a one-line error (unknown option).

    Returns:
        The model.
    """
    reject_options("alexnet", kw, ("dropout",))
    c, _, _ = check_input("alexnet", input_shape, min_side=MIN_SIDE)
    return AlexNet(num_classes, c, dropout)
