"""Features of a frozen classifier: what its last linear layer reads (timm models: `forward_head(pre_logits=True)`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from distill.errors import DistillError


def feature_extractor(model: nn.Module, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function `images [B, ...] -> features [B, D]` of `model`: timm's pre-logits features, else the input of its
    last `nn.Linear` (the classifier), captured by a forward hook."""
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):  # timm
        return lambda images: model.forward_head(model.forward_features(images), pre_logits=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DistillError(f"{what}: {type(model).__name__} has no linear classifier whose input could be its features")
    classifier = linears[-1]

    def extract(images: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = classifier.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            model(images)
        finally:
            handle.remove()
        return captured[-1].flatten(1)

    return extract
