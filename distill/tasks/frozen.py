"""Teacher hygiene shared by every task: frozen, in eval mode, without autograd."""

from __future__ import annotations

from torch import nn


def freeze(teacher: nn.Module) -> nn.Module:
    """Stop gradients and put the teacher in eval mode (BatchNorm statistics and dropout frozen)."""
    teacher.requires_grad_(False)
    return teacher.eval()


def drop_teacher_keys(state_dict: dict, prefix: str | tuple[str, ...] = "teacher.") -> dict:
    """The state dict without the entries under `prefix` (one or several): checkpoints hold the student only."""
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
