"""Decoupled Knowledge Distillation, DKD (Zhao et al., CVPR 2022); docs/methods.md, section 4.

Checked against the authors' code (megvii-research/mdistiller, `mdistiller/distillers/DKD.py`, and its copy with
logit standardization in sunshangquan/logit-standardization-KD). Deliberate differences, none of which changes the
value where theirs is finite:
- Masking. They subtract 1000 from the target's logit / T before the non-target softmax; here the target is
  masked exactly (its logit set to -inf), so the renormalization is exact whatever the logit range.
- TCKD. They sum softmax probabilities into [p_y, 1 - p_y] and take `torch.log`, which gives -inf (and NaN
  gradients) when p_y rounds to 1; here both binary log-probabilities come from log-sum-exps
  (`log p_y = z_y - lse(z)`, `log(1 - p_y) = lse(z without y) - lse(z)`), finite for any logits.
- T^2. They multiply TCKD and NCKD by T^2 each; here `(alpha * TCKD + beta * NCKD) * T^2` once. Same value.
- CE and warm-up. Their distiller adds `ce_weight * CE` and multiplies by `min(epoch / warmup, 1)` with its 1-based
  epoch, at every step; here CE is the recipe's `ce_weight` term and the epoch is an argument, required while the
  ramp is on (`warmup_epochs=0` is the explicit opt-out; a missing epoch is an error, not a silent factor of 1).
- fp32 compute and a detached teacher (theirs runs the teacher under `no_grad`).
"""

from __future__ import annotations

import torch
from torch import nn

from losses._common import (
    batch_mean,
    check_flag,
    check_int,
    check_non_negative,
    check_positive,
    check_target,
    kl_rows,
    linear_warmup,
    prepare_logits,
    zscore,
)
from losses.consumes import CLASS_LOGITS, Consumes

__all__ = ["DKDLoss", "decoupled_log_probs"]


def decoupled_log_probs(scaled_logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of DKD's two parts, computed exactly (no `- 1000` masking, no log of a sum).

    Args:
        scaled_logits: (B, C) logits already divided by the temperature, C >= 2; target: (B,) labels.

    Returns:
        binary: (B, 2), `[log p_y, log(1 - p_y)]` with `p = softmax(scaled_logits)`;
        non_target: (B, C), the log-softmax over the classes other than y (renormalized), -inf at y.
    """
    is_target = torch.zeros_like(scaled_logits, dtype=torch.bool).scatter_(-1, target[:, None], True)  # (B, C)
    masked = scaled_logits.masked_fill(is_target, float("-inf"))  # (B, C)
    lse_all = scaled_logits.logsumexp(dim=-1, keepdim=True)  # (B, 1)
    lse_other = masked.logsumexp(dim=-1, keepdim=True)  # (B, 1)
    z_y = scaled_logits.gather(-1, target[:, None])  # (B, 1)
    binary = torch.cat([z_y - lse_all, lse_other - lse_all], dim=-1)  # (B, 2)
    return binary, masked - lse_other


class DKDLoss(nn.Module):
    """Decoupled KD: target-class (TCKD) and non-target-class (NCKD) parts of the KD divergence, weighted apart.

    With `p = softmax(logits / T)` and label y:
    - TCKD = KL([p_t,y, 1 - p_t,y] || [p_s,y, 1 - p_s,y]), a binary KL;
    - NCKD = KL(p_t over the classes != y, renormalized || the same for the student);
    - `L = warmup * (alpha * TCKD + beta * NCKD) * T^2`, each KL summed over its classes and averaged over the batch,
      `warmup = min(epoch / warmup_epochs, 1)`.
    CE is not part of this loss (the recipe's `ce_weight` adds it: 1.0 in the CIFAR-100 protocol). The target class is
    masked exactly and TCKD is computed from log-sum-exps (see the module docstring for where this differs from the
    authors' code). Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached.

    Args:
        alpha: weight of TCKD (>= 0).
        beta: weight of NCKD (>= 0); CIFAR-100: 8, 6 for vgg13->vgg8 and WRN students, 2 for resnet56->resnet20
            and resnet110->resnet32.
        temperature: softening temperature T (> 0).
        warmup_epochs: epochs of linear warm-up of the whole term (>= 0; 0 turns it off, and only then may `epoch`
            be left out).
        standardize: z-score both logit vectors per sample first (`zscore`; the "DKD + LS" variant of Sun et al.,
            whose published run also scaled alpha and beta: docs/methods.md, section 4).

    Shapes:
        student_logits: (B, C); teacher_logits: (B, C), C >= 2; target: (B,) integer labels (required).
        epoch: the current epoch, 1-based as in the authors' training loop (the first epoch is 1, so warm-up starts
        at 1 / warmup_epochs, not 0); fractional values are allowed, values below 1 raise a ValueError. Required
        (a ValueError without it) unless `warmup_epochs` is 0. The framework's tasks pass `current_epoch + 1`.
        Returns a scalar, the unweighted term averaged over the batch.
    """

    consumes = Consumes(CLASS_LOGITS, extra=("epoch",))

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, minimum=0)
        self.standardize = check_flag("standardize", standardize)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"warmup_epochs={self.warmup_epochs}, standardize={self.standardize}"
        )

    def warmup(self, epoch: float | None) -> float:
        """`min(epoch / warmup_epochs, 1)` for the 1-based `epoch` (>= 1); 1 when warm-up is off. Without an epoch
        it raises unless warm-up is off."""
        return linear_warmup(epoch, self.warmup_epochs, "DKDLoss")

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        epoch: float | None = None,
    ) -> torch.Tensor:
        s, t = prepare_logits(student_logits, teacher_logits)  # (B, C) each, fp32 (fp64 stays), teacher detached
        target = check_target(s, target, "DKDLoss")
        if s.shape[-1] < 2:
            raise ValueError(f"DKDLoss needs at least 2 classes, got logits of shape {tuple(s.shape)}")
        factor = self.warmup(epoch)
        if self.standardize:
            s, t = zscore(s), zscore(t)
        temp = self.temperature
        binary_s, other_s = decoupled_log_probs(s / temp, target)  # (B, 2), (B, C)
        binary_t, other_t = decoupled_log_probs(t / temp, target)
        tckd = kl_rows(binary_t, binary_s)  # (B,)
        nckd = kl_rows(other_t, other_s)  # (B,); the target column has p = 0 and contributes 0
        return factor * temp * temp * batch_mean(self.alpha * tckd + self.beta * nckd)
