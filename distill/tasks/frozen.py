"""Frozen-model hygiene shared by every task: no gradients, eval mode, and no place in checkpoints."""

from __future__ import annotations

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients and put the model in eval mode (BatchNorm statistics and dropout frozen)."""
    model.requires_grad_(False)
    return model.eval()


def drop_frozen_keys(state_dict: dict, prefixes: tuple[str, ...]) -> dict:
    """The state dict without the entries under `prefixes`: checkpoints hold what trains, nothing frozen."""
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
