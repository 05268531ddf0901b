"""torch.compile of the student and the frozen teacher, as the recipe's `speed` section asks.

A model is compiled in place (its forward replaced on the instance: state-dict keys unchanged) for one input shape,
the first it is called with while compiled calls are wanted, with `dynamic=False`. Every other call runs the eager
forward: the epoch's last, smaller batch, and the student's evaluation (eval mode), so that nothing is compiled a
second time. With `mode: reduce-overhead` the compiled step runs as CUDA graphs: one launch for a whole forward or
backward, the cure for small models whose steps are bound by kernel launches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def compile_in_place(model: nn.Module, mode: str, training_only: bool) -> None:
    """Compile `model`'s forward for the first input shape it sees (in training mode only when `training_only`);
    other calls run eagerly."""
    eager: Callable[..., Any] = model.forward
    compiled = torch.compile(eager, mode=None if mode == "default" else mode, dynamic=False)
    compiled_shape: list[torch.Size] = []  # the one shape the compiled forward takes, once seen

    def forward(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(first, torch.Tensor) or (training_only and not model.training):
            return eager(*args, **kwargs)
        if not compiled_shape:
            compiled_shape.append(first.shape)
        return compiled(*args, **kwargs) if first.shape == compiled_shape[0] else eager(*args, **kwargs)

    model.forward = forward


def uses_cuda_graphs(mode: str) -> bool:
    return mode == "reduce-overhead"
