"""Standalone distillation losses. Each is a plain `torch.nn.Module` that imports torch only, computes in fp32
and never sends gradient to the teacher: lift any of them into your own training code."""

from losses.kd import KDLoss

__all__ = ["KDLoss"]
