"""ResNet-18/34/50/101/152 (He et al. 2015), laid out like torchvision's ``ResNet``.

Module names, registration order and tensor shapes equal torchvision's, so its published ImageNet weights
load key for key. Bottleneck blocks downsample in the 3x3 conv ("ResNet v1.5", as torchvision). Global
average pooling makes any input size from 1x1 up work; the stem divides the side by 4 and each of
layers 2-4 by 2 more (a 224 input ends as a 7x7 map, a 32 input as 1x1).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import (
    LR_WITH_BN,
    ModelMeta,
    check_input,
    register_model,
    reject_options,
    torchvision_weights,
)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1-projection) shortcut; ResNet-18/34."""

    expansion = 1  # output channels = planes * expansion

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (strided) → 1x1 expand by 4, plus shortcut; ResNet-50/101/152."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool) → four stages of residual blocks → global pool → ``fc``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: outputs of ``fc``.
        in_channels: input channels.
        zero_init_residual: start each block's last BatchNorm at zero so blocks begin as identities
            (Goyal et al. 2017; +0.2-0.3% top-1 in torchvision's experience).
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
                 num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64  # channels entering the next block
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0])
        self.layer2 = self._stage(block, 128, layers[1], stride=2)
        self.layer3 = self._stage(block, 256, layers[2], stride=2)
        self.layer4 = self._stage(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _stage(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
               stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # 1x1 projection so the shortcut matches the block's output shape.
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N, 512·expansion, H/32, W/32)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _meta(weights_file: str) -> ModelMeta:
    return ModelMeta((3, 224, 224), head="fc", first_conv="conv1", weights=torchvision_weights(weights_file),
                     lr=LR_WITH_BN)


def _resnet(arch: str, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int],
            num_classes: int, input_shape: tuple[int, int, int], zero_init_residual: bool,
            kw: dict) -> nn.Module:
    reject_options(arch, kw, ("zero_init_residual",))
    c, _, _ = check_input(arch, input_shape)
    model = ResNet(block, layers, num_classes, c, zero_init_residual=zero_init_residual)
    return model


@register_model(_meta("resnet18-f37072fd.pth"))
def resnet18(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
             zero_init_residual: bool = False, **kw) -> nn.Module:
    """ResNet-18 (torchvision layout, 11.7M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        zero_init_residual: start every residual branch at zero.
        **kw: rejected with a one-line error (unknown option).
    """
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, input_shape, zero_init_residual, kw)


@register_model(_meta("resnet34-b627a593.pth"))
def resnet34(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
             zero_init_residual: bool = False, **kw) -> nn.Module:
    """ResNet-34 (torchvision layout, 21.8M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        zero_init_residual: start every residual branch at zero.
        **kw: rejected with a one-line error (unknown option).
    """
    return _resnet("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, input_shape, zero_init_residual, kw)


@register_model(_meta("resnet50-0676ba61.pth"))
def resnet50(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
             zero_init_residual: bool = False, **kw) -> nn.Module:
    """ResNet-50 (torchvision layout, bottleneck blocks, 25.6M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        zero_init_residual: start every residual branch at zero.
        **kw: rejected with a one-line error (unknown option).
    """
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, input_shape, zero_init_residual, kw)


@register_model(_meta("resnet101-63fe2227.pth"))
def resnet101(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
              zero_init_residual: bool = False, **kw) -> nn.Module:
    """ResNet-101 (torchvision layout, bottleneck blocks, 44.5M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        zero_init_residual: start every residual branch at zero.
        **kw: rejected with a one-line error (unknown option).
    """
    return _resnet("resnet101", Bottleneck, (3, 4, 23, 3), num_classes, input_shape, zero_init_residual, kw)


@register_model(_meta("resnet152-394f9c45.pth"))
def resnet152(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
              zero_init_residual: bool = False, **kw) -> nn.Module:
    """ResNet-152 (torchvision layout, bottleneck blocks, 60.2M params; any input size).

    Args:
        num_classes: number of output logits.
        input_shape: (C, H, W) of one image.
        zero_init_residual: start every residual branch at zero.
        **kw: rejected with a one-line error (unknown option).
    """
    return _resnet("resnet152", Bottleneck, (3, 8, 36, 3), num_classes, input_shape, zero_init_residual, kw)
