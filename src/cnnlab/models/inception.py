"""Inception v3 (Szegedy et al. 2015), laid out like torchvision's ``Inception3``.

Module names (``Conv2d_1a_3x3``, ``Mixed_5b`` ... as in the TensorFlow original), registration order and
tensor shapes equal torchvision's, so its published ImageNet weights (``inception_v3_google-0cc3c7bd.pth``,
aux head included) load key for key. Every conv is conv → BatchNorm (eps 1e-3) → ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.googlenet import BasicConv2d, imagenet_to_tf_range
from cnnlab.models.registry import (
    LR_WITH_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)

# Side after the valid 3x3/2 convs and pools: 75 → 37 → 35 → 17 → 15 → 7 → 3 (Mixed_6a) → 1 (Mixed_7a).
# At 74 Mixed_7a gets a 2x2 map and has no output. (The auxiliary head would need 299-ish inputs, but
# it is never evaluated.)
MIN_SIDE = 75


def _conv(cin: int, cout: int, k: int | tuple[int, int], **kw) -> BasicConv2d:
    return BasicConv2d(cin, cout, kernel_size=k, **kw)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1→5x5 | 1x1→3x3→3x3 | avg-pool→1x1; out = 224 + ``pool_features`` channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _conv(cin, 64, 1)
        self.branch5x5_1 = _conv(cin, 48, 1)
        self.branch5x5_2 = _conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _conv(cin, 64, 1)
        self.branch3x3dbl_2 = _conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, padding=1)
        self.branch_pool = _conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 → 17: 3x3/2 | 1x1→3x3→3x3/2 | max-pool/2; out = 480 + ``cin`` channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _conv(cin, 64, 1)
        self.branch3x3dbl_2 = _conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (1x7 and 7x1); out = 768 channels."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _conv(cin, 192, 1)
        self.branch7x7_1 = _conv(cin, c7, 1)
        self.branch7x7_2 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _conv(cin, c7, 1)
        self.branch7x7dbl_2 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            d = conv(d)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b7, d, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 → 8: 1x1→3x3/2 | 1x1→1x7→7x1→3x3/2 | max-pool/2; out = 512 + ``cin``."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _conv(cin, 192, 1)
        self.branch3x3_2 = _conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _conv(cin, 192, 1)
        self.branch7x7x3_2 = _conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; out = 2048 channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = _conv(cin, 320, 1)
        self.branch3x3_1 = _conv(cin, 384, 1)
        self.branch3x3_2a = _conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _conv(cin, 448, 1)
        self.branch3x3dbl_2 = _conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # 768
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)  # 768
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.branch1x1(x), b3, d, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 map: avg-pool 5/3 → 1x1 conv 128 → 5x5 conv 768 → FC classes."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = _conv(cin, 128, 1)
        self.conv1 = _conv(128, 768, 5)
        self.conv1.conv.stddev = 0.01  # init std of this kernel (read by Inception3's initialisation)
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))  # (N, 768, 1, 1) at 17x17
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class Inception3(nn.Module):
    """Inception v3 whose ``forward`` returns only the main logits.

    Args:
        num_classes: outputs of ``fc`` (and of the auxiliary head).
        in_channels: input channels.
        aux_logits: build the auxiliary head ``AuxLogits``. It exists only so that weight files that
            contain it (torchvision's published one does) load key for key; ``forward`` never evaluates
            it, so it takes no part in the loss and gets no gradients.
        transform_input: re-scale ImageNet-normalised RGB input to the [-1, 1]-style scaling of the
            weights ported from TensorFlow (set it with those weights, as torchvision does).
        dropout: dropout before ``fc``.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, *, aux_logits: bool = False,
                 transform_input: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = _conv(in_channels, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _conv(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = _conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _conv(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        # Registered between Mixed_6e and Mixed_7a so the state-dict order matches torchvision's.
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)

        # torchvision's scheme: truncated normal (cut at ±2) with std 0.1 unless a layer sets ``stddev``.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=float(getattr(m, "stddev", 0.1)), a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x = imagenet_to_tf_range(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147) at 299
        x = self.maxpool1(x)  # 73x73
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))  # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (N, 288, 35, 35)
        x = self.Mixed_6a(x)  # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # AuxLogits would read here
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (N, 2048, 8, 8)
        x = self.dropout(self.avgpool(x))
        return self.fc(torch.flatten(x, 1))


@register_model(ModelMeta((3, 299, 299), head="fc", first_conv="Conv2d_1a_3x3.conv",
                          weights=torchvision_weights("inception_v3_google-0cc3c7bd.pth", input_size=299,
                                                      resize_size=342, transform_input=True),
                          aux_heads=("AuxLogits.",), min_side=MIN_SIDE, lr=LR_WITH_BN))
def inception_v3(
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] = (3, 299, 299),
    aux_logits: bool = False,
    transform_input: bool = False,
    dropout: float = 0.5,
    **kw,
) -> nn.Module:
    """Inception v3 (torchvision layout, 23.8M params, 27.2M with the aux head; inputs ≥ 75x75).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; 299x299 is the published size, anything from 75x75 works.
        aux_logits: include the auxiliary head (needed only to load files that contain it; never used by
            ``forward`` or the loss).
        transform_input: torchvision's input re-scaling for the published weights (RGB only).
        dropout: dropout before the final linear layer.
        **kw: rejected with a one-line error (unknown option).

    Returns:
        The model.
    """
    reject_options("inception_v3", kw, ("aux_logits", "transform_input", "dropout"))
    c, _, _ = check_input("inception_v3", input_shape, min_side=MIN_SIDE)
    if transform_input and c != 3:
        raise CnnlabError(f"inception_v3: transform_input re-scales RGB input, but input_shape has {c} "
                          "channel(s); drop transform_input or use RGB images")
    model = Inception3(num_classes, c, aux_logits=aux_logits, transform_input=transform_input,
                       dropout=dropout)
    return model
