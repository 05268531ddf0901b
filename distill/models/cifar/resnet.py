"""CIFAR ResNets of the KD benchmark lineage: resnet8 ... resnet110 (widths 16-16-32-64), resnet8x4 and resnet32x4.

Module and parameter names follow RepDistiller `models/resnet.py` (copied by mdistiller), so the published
`ckpt_epoch_240.pth` teachers load unchanged: `conv1`, `bn1`, `layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}`,
`layer{k}.0.downsample.{0,1}` (1x1 conv, BN) where the shape changes, and `fc`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import init_weights
from distill.models.registry import MODELS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity, or 1x1 conv-BN `downsample`), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, planes, H/stride, W/stride)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """A 3x3 stem, three stages of `(depth - 2) / 6` basic blocks (strides 1, 2, 2), global average pool, `fc`.

    Args:
        depth: 6n + 2 layers.
        widths: channels of the stem and of the three stages.
        num_classes: number of output classes.
        in_chans: input channels.
    """

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100, in_chans: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            *(BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(blocks))
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, num_features)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w0, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, w3, 8, 8)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.fc(self.forward_features(x))


@MODELS.register("resnet8")
def resnet8(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-8 for CIFAR: 1 basic block per stage, widths 16-16-32-64 (0.08M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(8, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet14")
def resnet14(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-14 for CIFAR: 2 basic blocks per stage, widths 16-16-32-64 (0.18M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(14, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet20")
def resnet20(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR: 3 basic blocks per stage, widths 16-16-32-64 (0.28M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet32")
def resnet32(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-32 for CIFAR: 5 basic blocks per stage, widths 16-16-32-64 (0.47M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(32, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet44")
def resnet44(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-44 for CIFAR: 7 basic blocks per stage, widths 16-16-32-64 (0.67M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(44, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet56")
def resnet56(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR: 9 basic blocks per stage, widths 16-16-32-64 (0.86M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(56, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet110")
def resnet110(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-110 for CIFAR: 18 basic blocks per stage, widths 16-16-32-64 (1.74M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(110, (16, 16, 32, 64), num_classes, in_chans)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-8x4: 1 basic block per stage, 4x widths 32-64-128-256 (1.23M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_chans)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes: int = 100, in_chans: int = 3) -> CifarResNet:
    """ResNet-32x4: 5 basic blocks per stage, 4x widths 32-64-128-256 (7.43M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_chans)
