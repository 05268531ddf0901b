"""MobileNetV2 for CIFAR of the KD benchmark lineage: the half-width model ("MobileNetV2", RepDistiller's
`mobile_half`: expansion 6, width multiplier 0.5, a 1280-wide last conv).

Module and parameter names follow RepDistiller `models/mobilenetv2.py` (copied by mdistiller), so the published
`ckpt_epoch_240.pth` files load unchanged: `conv1.{0,1}` (3x3 stride-2 conv, BN), `blocks.{stage}.{i}.conv.{0..7}`
(1x1 expand conv, BN, ReLU, 3x3 depthwise conv, BN, ReLU, 1x1 project conv, BN), `conv2.{0,1}` (1x1 conv, BN)
and `classifier.0` (Linear). Unlike torchvision's, the first block keeps its 1x1 expand conv (ratio 1) and the
activations are ReLU, not ReLU6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import init_weights
from distill.models.registry import MODELS


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, with an identity shortcut when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """A stride-2 3x3 stem, seven stages of inverted residuals, a 1x1 conv to `last_channel`, average pool, Linear.

    Args:
        num_classes: number of output classes.
        in_chans: input channels.
        expand_ratio: expansion of every stage but the first (which uses 1).
        width_mult: multiplier of the stem and stage widths (the last conv stays 1280 unless width_mult > 1).
    """

    # (expansion, channels, blocks, stride) per stage; None: use `expand_ratio`.
    STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
              (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))  # fmt: skip

    def __init__(
        self, num_classes: int = 100, in_chans: int = 3, expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = nn.Sequential(*_conv_bn_relu(in_chans, channels, 3, stride=2))
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.STAGES:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio if t is None else t))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.num_features = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*_conv_bn_relu(channels, self.num_features, 1))
        self.classifier = nn.Sequential(nn.Linear(self.num_features, num_classes))
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, 1280)
        x = self.conv1(x)  # (B, 16, 16, 16) at width 0.5
        for stage in self.blocks:
            x = stage(x)  # ends at (B, 160, 2, 2)
        x = self.conv2(x)  # (B, 1280, 2, 2)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.forward_features(x))


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int = 100, in_chans: int = 3) -> MobileNetV2:
    """Half-width MobileNetV2 for CIFAR, expansion 6 (the lineage's "MobileNetV2"; 0.81M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return MobileNetV2(num_classes, in_chans, expand_ratio=6, width_mult=0.5)
