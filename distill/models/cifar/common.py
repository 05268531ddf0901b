"""Pieces shared by the CIFAR model families: the lineage's weight init and the channel shuffle."""

from __future__ import annotations

import torch
from torch import nn


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """The reference init: He-normal (fan_out) convs with zero bias, BN weight 1 / bias 0.

    `linear_std`: draw Linear weights from N(0, std) with zero bias (VGG, MobileNetV2); None keeps PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # std sqrt(2 / (k*k*out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
    """ShuffleNet's channel shuffle: view channels as (groups, C/groups), transpose, flatten back."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
