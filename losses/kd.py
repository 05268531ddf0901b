"""Vanilla knowledge distillation (Hinton et al., 2015); methods.md section 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_positive(name: str, value: float) -> float:
    """Return `value` as a float, or raise a ValueError naming the argument."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


class KDLoss(nn.Module):
    """Temperature-scaled KL divergence between teacher and student class distributions.

    `L = T^2 * mean_B sum_C p_t * (log p_t - log p_s)` with `p = softmax(logits / T)`.
    The T^2 factor keeps the gradient scale independent of T. Computed in fp32 for fp16/bf16/fp32
    inputs (fp64 inputs stay fp64, so `gradcheck` works); the teacher logits are detached.

    Args:
        temperature: softening temperature T (> 0); the CIFAR-100 protocol uses 4.

    Shapes:
        student_logits: (B, C); teacher_logits: (B, C); target: ignored (accepted so all logit losses share a call).
        Returns a scalar, the unweighted term averaged over the batch.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
        t = self.temperature
        dtype = torch.promote_types(student_logits.dtype, torch.float32)  # at least fp32; fp64 stays fp64
        log_p_s = F.log_softmax(student_logits.to(dtype) / t, dim=-1)  # (B, C)
        log_p_t = F.log_softmax(teacher_logits.detach().to(dtype) / t, dim=-1)  # (B, C)
        p_t = log_p_t.exp()
        # classes the teacher rules out (logit -inf, p_t = 0) contribute 0, not 0 * inf = NaN
        per_sample = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0).sum(dim=-1)  # (B,)
        if per_sample.numel() == 0:
            return student_logits.to(dtype).sum() * 0.0
        return per_sample.mean() * t * t
