"""Optimizers and per-step learning-rate schedules from the recipe's settings."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from distill.config.schema import OptimizerSettings, SchedulerSettings


def build_optimizer(settings: OptimizerSettings, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    # On a CUDA GPU the fused kernels update all parameters in a few launches (the default takes one per group of
    # tensors and step): the same update up to rounding, and much of a small model's step time.
    fused = bool(params) and all(p.is_cuda and p.dtype in FUSED_DTYPES for p in params) or None
    if settings.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.nesterov,
            fused=fused,
        )
    return torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=tuple(settings.betas),
        eps=settings.eps,
        weight_decay=settings.weight_decay,
        fused=fused,
    )


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def lr_factor(settings: SchedulerSettings, step: int, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    warmup_steps = round(settings.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if settings.name == "multistep":
        epoch = step // steps_per_epoch
        return settings.gamma ** sum(epoch >= m for m in settings.milestones)
    if settings.name == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        floor = settings.min_lr / base_lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(
    settings: SchedulerSettings, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int
) -> LambdaLR:
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: lr_factor(settings, step, steps_per_epoch, total_steps, base_lr))
