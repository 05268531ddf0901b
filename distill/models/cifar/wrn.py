"""Wide ResNets for CIFAR of the KD benchmark lineage: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2.

Module and parameter names follow RepDistiller `models/wrn.py` (copied by mdistiller), so the published
`ckpt_epoch_240.pth` teachers load unchanged: `conv1`, `block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`,
`block{k}.layer.0.convShortcut` (1x1 conv, no BN) where the width changes, the final `bn1`, and `fc`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import init_weights
from distill.models.registry import MODELS


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus the identity or a 1x1 `convShortcut`.

    As in the reference, a block that changes the width takes its shortcut from the activated input
    (`relu(bn1(x))`); one that keeps the width adds the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.convShortcut: nn.Conv2d | None = None  # the reference's name (it is in the checkpoints)
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """`n` wide blocks; the reference's `NetworkBlock` (its `layer` attribute is in the parameter names)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """A 3x3 stem (16 channels), three stages of `(depth - 4) / 6` wide blocks, BN-ReLU, global average pool, `fc`.

    Args:
        depth: 6n + 4 layers.
        widen_factor: stage widths are 16k, 32k, 64k.
        num_classes: number of output classes.
        in_chans: input channels.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], stride=1)
        self.block2 = WideStage(n, widths[1], widths[2], stride=2)
        self.block3 = WideStage(n, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)  # the reference zeroes the classifier bias and keeps its default weight init

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, num_features)
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64k, 8, 8)
        x = F.relu(self.bn1(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.fc(self.forward_features(x))


@MODELS.register("wrn_16_1")
def wrn_16_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-16-1 for CIFAR: 2 blocks per stage, widths 16-32-64 (0.18M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return WideResNet(16, 1, num_classes, in_chans)


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-16-2 for CIFAR: 2 blocks per stage, widths 32-64-128 (0.70M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return WideResNet(16, 2, num_classes, in_chans)


@MODELS.register("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-40-1 for CIFAR: 6 blocks per stage, widths 16-32-64 (0.57M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return WideResNet(40, 1, num_classes, in_chans)


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_chans: int = 3) -> WideResNet:
    """WRN-40-2 for CIFAR: 6 blocks per stage, widths 32-64-128 (2.26M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return WideResNet(40, 2, num_classes, in_chans)
