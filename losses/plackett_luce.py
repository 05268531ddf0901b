"""Plackett-Luce Distillation, PLD (Bassam, Zhu, Bian, 2025); docs/methods.md, section 3."""

from __future__ import annotations

import torch
from torch import nn

from losses._common import batch_mean, check_int, check_positive, check_target, prepare_logits
from losses.consumes import CLASS_LOGITS, Consumes

__all__ = ["PlackettLuceLoss", "teacher_ranking"]


def teacher_ranking(teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The permutation `pi*`: the true label first, then the other classes by descending teacher logit.

    Ties (frequent with bf16 logits) resolve deterministically, lower class index first: both sorts are stable.
    Two sorts rather than one with the label's key set to +inf, so a teacher logit of +inf cannot outrank the label.

    Args:
        teacher_logits: (B, C); target: (B,) class indices in [0, C).

    Returns:
        (B, C) class indices, rank by rank.
    """
    by_teacher = torch.sort(teacher_logits, dim=-1, descending=True, stable=True).indices  # (B, C)
    not_label = (by_teacher != target[:, None]).to(torch.uint8)  # (B, C): 0 at the label's rank
    label_first = torch.sort(not_label, dim=-1, stable=True).indices  # (B, C): label, then the rest in teacher order
    return by_teacher.gather(-1, label_first)


class PlackettLuceLoss(nn.Module):
    """Teacher-weighted Plackett-Luce (ListMLE-style) loss on the student logits.

    With the ranking `pi*` (label first, then the other classes by descending teacher logit), `u_k = s[pi*_k]`
    (raw student logits, no temperature), `lse_k = log sum_{l >= k} exp(u_l)` and the teacher weights
    `a_k = softmax(t / tau)[pi*_k]`:

        `L = mean_B sum_k a_k * (lse_k - u_k)`

    No T^2 factor and no separate CE: the k = 1 term is a teacher-weighted CE, and with `a = (1, 0, ..., 0)` the
    loss equals CE. Convex in the student logits and unchanged by adding a constant to them. Computed in fp32 for
    fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached and ranked in the compute dtype.

    Args:
        temperature: tau (> 0); only shapes the teacher weights `a`. 1 is best on ImageNet; the CIFAR-100 runs
            used 4.
        ignore_index: samples whose label equals this are left out of the mean (all ignored: loss 0).

    Shapes:
        student_logits: (B, C); teacher_logits: (B, C); target: (B,) integer labels (required).
        Returns a scalar, the unweighted term averaged over the samples that are not ignored.
    """

    consumes = Consumes(CLASS_LOGITS)

    def __init__(self, temperature: float = 1.0, ignore_index: int = -100) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, ignore_index={self.ignore_index}"

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = prepare_logits(student_logits, teacher_logits)  # (B, C) each, fp32 (fp64 stays), teacher detached
        target = check_target(s, target, "PlackettLuceLoss")
        valid = target != self.ignore_index  # (B,)
        label = target.masked_fill(~valid, 0)  # ignored rows get a stand-in label; they are masked out below
        order = teacher_ranking(t, label)  # (B, C)
        u = s.gather(-1, order)  # (B, C) student logits in rank order
        lse = torch.logcumsumexp(u.flip(-1), dim=-1).flip(-1)  # (B, C) suffix log-sum-exp
        a = torch.softmax(t / self.temperature, dim=-1).gather(-1, order)  # (B, C) teacher weight of each rank
        # the last rank's term is lse_C - u_C = 0 exactly: left out, so rounding in logcumsumexp's backward cannot
        # turn it into a spurious gradient
        per_sample = (a * (lse - u))[:, :-1].sum(dim=-1)  # (B,)
        return batch_mean(per_sample, valid)
