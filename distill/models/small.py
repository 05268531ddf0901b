"""Small image classifiers for the offline quickstart and tests (8x8 digits, tiny images)."""

from __future__ import annotations

import torch
from torch import nn

from distill.models.registry import MODELS


@MODELS.register("convnet")
class ConvNet(nn.Module):
    """A plain CNN: per stage conv3x3-BN-ReLU then 2x2 max-pool, global average pool, an MLP head.

    Args:
        num_classes: number of output classes (set from the dataset).
        in_chans: input channels (set from the dataset).
        widths: channels of each stage; the spatial size halves after every stage but the last.
        hidden: width of the hidden layer of the head (0: a single linear layer).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: list[int] = [32, 64],
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if hidden > 0:
            head += [nn.Linear(channels, hidden), nn.ReLU(inplace=True)]
            channels = hidden
        head += [nn.Dropout(dropout), nn.Linear(channels, num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.features(x))


@MODELS.register("mlp")
class MLP(nn.Module):
    """A multi-layer perceptron on flattened images.

    Args:
        num_classes: number of output classes (set from the dataset).
        in_features: flattened input size (64 for 8x8 digits).
        hidden: widths of the hidden layers.
    """

    def __init__(self, num_classes: int = 10, in_features: int = 64, hidden: list[int] = [64]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, num_classes)
        return self.net(x)
