"""Vanilla knowledge distillation (Hinton et al., 2015); docs/methods.md, section 1, with the optional logit
standardization of section 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import batch_mean, check_flag, check_positive, kl_rows, prepare_logits, zscore
from losses.consumes import CLASS_LOGITS, Consumes

__all__ = ["KDLoss", "check_positive"]


class KDLoss(nn.Module):
    """Temperature-scaled KL divergence between teacher and student class distributions.

    `L = T^2 * mean_B sum_C p_t * (log p_t - log p_s)` with `p = softmax(logits / T)`.
    The T^2 factor keeps the gradient scale independent of T. Computed in fp32 for fp16/bf16/fp32 inputs (fp64 inputs
    stay fp64, so `gradcheck` works); the teacher logits are detached.

    Args:
        temperature: softening temperature T (> 0); the CIFAR-100 protocol uses 4.
        standardize: z-score both logit vectors per sample (`zscore`, unbiased std) before dividing by T
            (Sun et al., CVPR 2024; `ZScoreKDLoss` is this with T = 2 by default).

    Shapes:
        student_logits: (B, C); teacher_logits: (B, C); target: ignored (accepted so all logit losses share a call).
        Returns a scalar, the unweighted term averaged over the batch.
    """

    consumes = Consumes(CLASS_LOGITS)

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.standardize = check_flag("standardize", standardize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, standardize={self.standardize}"

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = prepare_logits(student_logits, teacher_logits)  # (B, C) each, fp32 (fp64 stays), teacher detached
        if self.standardize:
            s, t = zscore(s), zscore(t)
        temp = self.temperature
        per_sample = kl_rows(F.log_softmax(t / temp, dim=-1), F.log_softmax(s / temp, dim=-1))  # (B,)
        return batch_mean(per_sample) * temp * temp
