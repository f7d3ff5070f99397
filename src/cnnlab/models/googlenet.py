"""GoogLeNet (Inception v1), Szegedy et al. 2014, laid out like torchvision's ``GoogLeNet``.

Module names, registration order and tensor shapes equal torchvision's, so its published ImageNet weights
(``googlenet-1378be20.pth``) load key for key. As in torchvision, the "5x5" branch uses a 3x3 kernel (the
ported weights were trained that way, pytorch/vision#906).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LR_WITH_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)

# Smallest input side that survives the five stride-2 reductions (the 7x7/2 conv, then four ceil-mode
# max-pools): 15 → 8 → 4 → 2 → 1 → 1. At 14 the third max-pool gets a 1x1 map and has no output.
MIN_SIDE = 15


def imagenet_to_tf_range(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``transform_input``: ImageNet-normalised RGB → the ``(p - 0.5) / 0.5`` scaling.

    The weights ported from TensorFlow expect pixels p in 0..1 mapped to [-1, 1]. Undoing the ImageNet
    normalisation and applying that scaling is, per channel, ``x * std / 0.5 + (mean - 0.5) / 0.5``.
    """
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return x * (std / 0.5) + (mean - 0.5) / 0.5


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, as the TensorFlow port) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kw)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1→3x3 | 1x1→3x3 | pool→1x1.

    Output channels = ``ch1x1 + ch3x3 + ch5x5 + pool_proj``; the spatial size is unchanged.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        # 3x3, not the paper's 5x5: the published weights have 3x3 kernels here.
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on an intermediate map: pool to 4x4 → 1x1 conv 128 → FC 1024 → FC classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))  # (N, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # (N, 1024)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    """GoogLeNet whose ``forward`` returns only the main logits.

    Args:
        num_classes: outputs of ``fc`` (and of the auxiliary heads).
        in_channels: input channels (3 for RGB, 1 for grayscale).
        aux_logits: build the two auxiliary heads ``aux1`` / ``aux2``. They exist only so that weight files
            that contain them (torchvision's published one does) load key for key; ``forward`` never
            evaluates them, so they take no part in the loss and get no gradients.
        transform_input: re-scale ImageNet-normalised RGB input to the [-1, 1]-style scaling of the
            weights ported from TensorFlow (set it with those weights, as torchvision does).
        dropout: dropout before ``fc``.
        dropout_aux: dropout inside the auxiliary heads.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, *, aux_logits: bool = False,
                 transform_input: bool = False, dropout: float = 0.2, dropout_aux: float = 0.7) -> None:
        super().__init__()
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        # (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj), Table 1 of the paper.
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

        # Registered here (after inception5b, before fc) so the state-dict order matches torchvision's.
        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: truncated normal (std 0.01, cut at ±2) for conv/linear kernels.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            x = imagenet_to_tf_range(x)
        x = self.maxpool1(self.conv1(x))  # (N, 64, H/4, W/4) at 224: 56x56
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (N, 192, 28, 28) at 224
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (N, 480, 14, 14)
        # aux1 would read after 4a (512 channels), aux2 after 4d (528); they are not used here.
        x = self.inception4a(x)
        x = self.inception4e(self.inception4d(self.inception4c(self.inception4b(x))))  # (N, 832, 14, 14)
        x = self.maxpool4(x)  # (N, 832, 7, 7)
        x = self.inception5b(self.inception5a(x))  # (N, 1024, 7, 7)
        x = torch.flatten(self.avgpool(x), 1)  # (N, 1024)
        return self.fc(self.dropout(x))


@register_model(ModelMeta((3, 224, 224), head="fc", first_conv="conv1.conv",
                          weights=torchvision_weights("googlenet-1378be20.pth", transform_input=True),
                          aux_heads=("aux1.", "aux2."), min_side=MIN_SIDE, lr=LR_WITH_BN))
def googlenet(
    *,
    num_classes: int = 1000,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    aux_logits: bool = False,
    transform_input: bool = False,
    dropout: float = 0.2,
    **kw,
) -> nn.Module:
    """GoogLeNet / Inception v1 (torchvision layout, 6.6M params; inputs ≥ 15x15).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image; any size from 15x15 up (global average pooling).
        aux_logits: include the auxiliary heads (needed only to load files that contain them; never used
            by ``forward`` or the loss).
        transform_input: torchvision's input re-scaling for the published weights (RGB only).
        dropout: dropout before the final linear layer.
        **kw: rejected with a one-line error (unknown option).

    Returns:
        The model.
    """
    reject_options("googlenet", kw, ("aux_logits", "transform_input", "dropout"))
    c, _, _ = check_input("googlenet", input_shape, min_side=MIN_SIDE)
    if transform_input and c != 3:
        raise CnnlabError(f"googlenet: transform_input re-scales RGB input, but input_shape has {c} "
                          "channel(s); drop transform_input or use RGB images")
    model = GoogLeNet(num_classes, c, aux_logits=aux_logits, transform_input=transform_input, dropout=dropout)
    return model
