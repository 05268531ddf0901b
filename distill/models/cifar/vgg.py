"""VGG with BatchNorm for CIFAR of the KD benchmark lineage: vgg8, vgg11, vgg13, vgg16, vgg19 (no FC stack).

Module and parameter names follow RepDistiller `models/vgg.py` (its `vgg*_bn` models, registered there as
`vgg8`...`vgg19`), so the published `ckpt_epoch_240.pth` teachers load unchanged: five stages
`block{0..4}` of [conv3x3 (with bias), BN, ReLU] whose last ReLU is left out (keys `block0.0.weight`,
`block0.0.bias`, `block0.1.weight`, ... then `block0.3.*` for a second conv), and a single `classifier`
Linear(512, num_classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.cifar.common import init_weights
from distill.models.registry import MODELS

# Conv widths of the five stages (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _stage(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # ends with BN: the stage's last ReLU is applied in forward


class VGG(nn.Module):
    """Five conv stages; max-pool after the first three (and after the fourth for 64-pixel inputs), global
    average pool, one `classifier` Linear layer.

    Args:
        stages: conv widths of each of the five stages (the last must end with 512).
        num_classes: number of output classes.
        in_chans: input channels.
    """

    def __init__(self, stages: list[list[int]], num_classes: int = 100, in_chans: int = 3) -> None:
        super().__init__()
        self.block0 = _stage(in_chans, stages[0])
        self.block1 = _stage(stages[0][-1], stages[1])
        self.block2 = _stage(stages[1][-1], stages[2])
        self.block3 = _stage(stages[2][-1], stages[3])
        self.block4 = _stage(stages[3][-1], stages[4])
        self.num_features = stages[4][-1]
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 32, 32) -> (B, 512)
        size = x.shape[2]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)  # (B, 64, 16, 16)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)  # (B, 128, 8, 8)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)  # (B, 256, 4, 4)
        x = F.relu(self.block3(x))  # (B, 512, 4, 4)
        if size == 64:  # the reference pools a fourth time only for 64-pixel inputs (Tiny-ImageNet)
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))  # (B, 512, 4, 4)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.forward_features(x))


@MODELS.register("vgg8")
def vgg8(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-8 with BatchNorm for CIFAR: 1-1-1-1-1 convs per stage (3.97M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return VGG(VGG_STAGES["vgg8"], num_classes, in_chans)


@MODELS.register("vgg11")
def vgg11(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-11 with BatchNorm for CIFAR: 1-1-2-2-2 convs per stage (9.28M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return VGG(VGG_STAGES["vgg11"], num_classes, in_chans)


@MODELS.register("vgg13")
def vgg13(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-13 with BatchNorm for CIFAR: 2-2-2-2-2 convs per stage (9.46M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return VGG(VGG_STAGES["vgg13"], num_classes, in_chans)


@MODELS.register("vgg16")
def vgg16(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-16 with BatchNorm for CIFAR: 2-2-3-3-3 convs per stage (14.77M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return VGG(VGG_STAGES["vgg16"], num_classes, in_chans)


@MODELS.register("vgg19")
def vgg19(num_classes: int = 100, in_chans: int = 3) -> VGG:
    """VGG-19 with BatchNorm for CIFAR: 2-2-4-4-4 convs per stage (20.09M params with 100 classes).

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels of the first conv (set from the dataset).
    """
    return VGG(VGG_STAGES["vgg19"], num_classes, in_chans)
