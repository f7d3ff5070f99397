"""MobileNetV2 (Sandler et al. 2018), laid out like torchvision's ``MobileNetV2``.

Module names, registration order and tensor shapes equal torchvision's, so its published ImageNet weights
load key for key (at ``width_mult=1``). Global average pooling makes any input size from 1x1 up work; the
feature map is the input divided by 32 (rounded up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import (
    LR_WITH_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)

# Inverted-residual stages: (expansion t, output channels c, repeats n, first stride s), Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Rounds a channel count to the nearest multiple of ``divisor``, never more than 10% down (TF's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias, "same" padding) → BatchNorm → ReLU6; keys ``0.weight``, ``1.*`` as torchvision."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) → 3x3 depthwise → 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` (stem, 17 inverted residuals, 1x1 conv to 1280) → global pool → ``classifier``.

    Args:
        num_classes: outputs of ``classifier.1``.
        in_channels: input channels.
        width_mult: channel multiplier (1.0 is the published model).
        dropout: dropout before the final linear layer.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(in_channels, cin, stride=2)]
        for t, c, n, s in STAGES:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU6(cin, last, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))

        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 1280, ceil(H/32), ceil(W/32))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        return self.classifier(x)


@register_model(ModelMeta((3, 224, 224), head="classifier.1", first_conv="features.0.0",
                          weights=torchvision_weights("mobilenet_v2-b0353104.pth"), lr=LR_WITH_BN))
def mobilenet_v2(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
                 width_mult: float = 1.0, dropout: float = 0.2, **kw) -> nn.Module:
    """MobileNetV2 (torchvision layout, 3.5M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        width_mult: channel multiplier; published weights exist for 1.0 only.
        dropout: dropout before the final linear layer.
        **kw: rejected with a one-line error (unknown option).

    Returns:
        The model.
    """
    reject_options("mobilenet_v2", kw, ("width_mult", "dropout"))
    c, _, _ = check_input("mobilenet_v2", input_shape)
    model = MobileNetV2(num_classes, c, width_mult=width_mult, dropout=dropout)
    return model
