"""ShuffleNet V1 for CIFAR of the KD benchmark lineage ("ShuffleV1": 3 groups, stages 240-480-960 of 4-8-4 blocks).

Module and parameter names follow RepDistiller `models/ShuffleNetv1.py` (copied by mdistiller), so published
checkpoints load unchanged: a 1x1 stem `conv1`/`bn1` (24 channels, full resolution), `layer{1,2,3}.{i}.{conv1,bn1,
conv2,bn2,conv3,bn3}` and the classifier `linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import channel_shuffle
from distill.models.registry import MODELS


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 conv - shuffle - 3x3 depthwise - grouped 1x1 conv; stride 2 concatenates an avg-pooled shortcut.

    The first block after the 24-channel stem uses an ungrouped first conv, as in the reference.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        self.groups1 = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.groups1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out [+ C_in], H/s, W/s)
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.groups1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """A 1x1 stem (24 channels), three stages that each halve the resolution, global average pool, `linear`.

    Args:
        num_classes: number of output classes.
        in_chans: input channels.
        out_planes: output channels of the three stages.
        num_blocks: blocks per stage.
        groups: groups of the 1x1 convs.
    """

    def __init__(
        self,
        num_classes: int = 100,
        in_chans: int = 3,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.layer1 = self._stage(24, out_planes[0], num_blocks[0], groups)
        self.layer2 = self._stage(out_planes[0], out_planes[1], num_blocks[1], groups)
        self.layer3 = self._stage(out_planes[1], out_planes[2], num_blocks[2], groups)
        self.num_features = out_planes[2]
        self.linear = nn.Linear(out_planes[2], num_classes)

    @staticmethod
    def _stage(in_planes: int, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        # The stride-2 first block concatenates its pooled input: its branch makes `out_planes - in_planes` channels.
        first = ShuffleV1Block(in_planes, out_planes - in_planes, 2, groups)
        return nn.Sequential(first, *(ShuffleV1Block(out_planes, out_planes, 1, groups) for _ in range(blocks - 1)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, 960)
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 24, 32, 32)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 960, 4, 4)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.linear(self.forward_features(x))


@MODELS.register("shufflev1")
def shufflev1(num_classes: int = 100, in_chans: int = 3) -> ShuffleNetV1:
    """ShuffleNet V1 for CIFAR, 3 groups (the lineage's "ShuffleV1"; 0.95M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return ShuffleNetV1(num_classes, in_chans)
