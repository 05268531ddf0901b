"""ShuffleNet V2 1x for CIFAR of the KD benchmark lineage ("ShuffleV2": stages 116-232-464 of 3-7-3 blocks, a
1024-wide last conv).

Module and parameter names follow RepDistiller `models/ShuffleNetv2.py` (copied by mdistiller), so published
checkpoints load unchanged: a 1x1 stem `conv1`/`bn1` (24 channels, full resolution); per stage `layer{k}.0` a
down-sampling block (`conv1`..`conv5`, `bn1`..`bn5`) then `layer{k}.{1..n}` basic blocks (`conv1`..`conv3`,
`bn1`..`bn3`); a final 1x1 `conv2`/`bn2`; the classifier `linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import channel_shuffle
from distill.models.registry import MODELS


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, depthwise: bool = False) -> nn.Conv2d:
    groups = in_ch if depthwise else 1
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class ShuffleV2Block(nn.Module):
    """Split channels in half; the second half goes 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU; concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = _conv(half, half, 1)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _conv(half, half, 3, depthwise=True)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _conv(half, half, 1)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        keep, x2 = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Two stride-2 branches of out/2 channels each, concatenated and shuffled.

    Left: 3x3 depthwise-BN, 1x1-BN-ReLU. Right: 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _conv(in_ch, in_ch, 3, stride=2, depthwise=True)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = _conv(in_ch, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_ch, mid, 1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, stride=2, depthwise=True)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid, 1)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """A 1x1 stem (24 channels), three stages that each halve the resolution, a 1x1 conv, average pool, `linear`.

    Args:
        num_classes: number of output classes.
        in_chans: input channels.
        out_channels: output channels of the three stages and of the last 1x1 conv.
        num_blocks: basic blocks per stage (after its down-sampling block).
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.layer1 = self._stage(24, out_channels[0], num_blocks[0])
        self.layer2 = self._stage(out_channels[0], out_channels[1], num_blocks[1])
        self.layer3 = self._stage(out_channels[1], out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_features = out_channels[3]
        self.linear = nn.Linear(out_channels[3], num_classes)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(ShuffleV2DownBlock(in_ch, out_ch), *(ShuffleV2Block(out_ch) for _ in range(blocks)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, 1024)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 24, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 464, 4, 4)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, 1024, 4, 4)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.linear(self.forward_features(x))


@MODELS.register("shufflev2")
def shufflev2(num_classes: int = 100, in_chans: int = 3) -> ShuffleNetV2:
    """ShuffleNet V2 1x for CIFAR (the lineage's "ShuffleV2"; 1.36M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return ShuffleNetV2(num_classes, in_chans)
