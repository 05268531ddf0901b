"""AlignDistil (Zhang et al., ACL 2025): token-level alignment as distillation from a teacher composed of DPO models;
docs/methods.md, section 7, following the authors' released trainers (`aligndistil_offpolicy_trainer.py`,
`aligndistil_trainer.py` in songmzhang/AlignDistil, OpenRLHF based).

Per response position, from the logits `z_dpo` of the DPO model and `z_2` of a second model (the reverse-DPO model or
the reference/SFT model, by variant), a teacher distribution `softmax(z* / T)` and a per-token weight are built; the
student is pulled towards the teacher by the REVERSE KL over the full vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import as_mask, batch_mean, check_positive, compute_dtype, kl_rows
from losses.chunked import ChunkTargets, fused_masked_sum_and_count, log_softmax_
from losses.consumes import OBJECTIVE, Consumes
from losses.teacher_rows import TeacherHead
from losses.token_divergence import DIVERGENCES

__all__ = ["ALPHA_FLOOR", "AlignDistilLoss", "AlignDistilVariant", "adaptive_coefficient"]

AlignDistilVariant = Literal["adaptive", "fixed", "fixed_adaptive"]

# Added to every adaptive coefficient (docs/methods.md, section 7; `tvd * beta2 + 1e-3` in the authors' code): keeps
# `beta / alpha_t` finite where the two models agree.
ALPHA_FLOOR = 1e-3


def adaptive_coefficient(
    dpo_logits: torch.Tensor, second_logits: torch.Tensor, beta2: float, temperature: float = 1.0
) -> torch.Tensor:
    """`alpha_t = beta2 * sum_v |p_dpo - p_2| + 1e-3` per position (docs/methods.md, section 7), without gradient.

    `p = softmax(logits / temperature)`; the L1 distance lies in [0, 2] and is not clipped, so `alpha_t` lies in
    `[1e-3, 2 * beta2 + 1e-3]`. `AlignDistilLoss` calls this at temperature 1, as section 7 and the authors' code do
    (their `tea_lprobs`, `ref_lprobs` are untempered log-softmaxes); the argument is for other uses.

    Args:
        dpo_logits: (..., V) the DPO model's logits.
        second_logits: (..., V) the reverse-DPO model's (AlignDistil) or the reference model's (`fixed_adaptive`).
        beta2: the scale of the distance (> 0).
        temperature: T of the two distributions.

    Returns:
        (...) coefficients in fp32 (fp64 if either input is fp64), detached.
    """
    if dpo_logits.shape != second_logits.shape:
        raise ValueError(f"DPO logits {tuple(dpo_logits.shape)} != second model's {tuple(second_logits.shape)}")
    dtype = torch.promote_types(compute_dtype(dpo_logits), compute_dtype(second_logits))
    with torch.no_grad():
        p_dpo = F.softmax(dpo_logits.detach().to(dtype) / temperature, dim=-1)
        p_2 = F.softmax(second_logits.detach().to(dtype) / temperature, dim=-1)
        return beta2 * (p_dpo - p_2).abs().sum(dim=-1) + ALPHA_FLOOR


# (z_dpo (N, V), z_2 (N, V), beta, beta2) -> (teacher logits z* (N, V), per-token weight (N,)); no gradient.
TeacherRule = Callable[[torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]]


def _adaptive(z_dpo: torch.Tensor, z_rev: torch.Tensor, beta: float, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = adaptive_coefficient(z_dpo, z_rev, beta2)  # (N,)
    return z_dpo + alpha[:, None] * (z_dpo - z_rev), beta / alpha


def _fixed(z_dpo: torch.Tensor, z_ref: torch.Tensor, beta: float, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = beta / beta2
    return w * z_dpo + (1.0 - w) * z_ref, torch.full(z_dpo.shape[:1], beta2, dtype=z_dpo.dtype, device=z_dpo.device)


def _fixed_adaptive(
    z_dpo: torch.Tensor, z_ref: torch.Tensor, beta: float, beta2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = adaptive_coefficient(z_dpo, z_ref, beta2)  # (N,)
    return alpha[:, None] * z_dpo + (1.0 - alpha[:, None]) * z_ref, beta / alpha


TEACHER_RULES: dict[str, TeacherRule] = {"adaptive": _adaptive, "fixed": _fixed, "fixed_adaptive": _fixed_adaptive}
assert tuple(TEACHER_RULES) == get_args(AlignDistilVariant)


@dataclass
class WeightedTarget:
    """A chunk of AlignDistil's teacher: `log softmax(z* / T)` rows `(c, V)` and each row's weight `(c,)`."""

    log_probs: torch.Tensor
    weight: torch.Tensor


class ComposedTeacher:
    """The chunk source of AlignDistil's teacher: each chunk's rows of the DPO and the second model (from their
    hidden states and heads) composed into `z*`, with the per-token weight times the row's share `scale` of the
    loss (1 / (its sequence's masked positions x the sequences with any))."""

    describes = "DPO model hidden states"

    def __init__(self, loss: AlignDistilLoss, dpo: TeacherHead, second: TeacherHead, scale: torch.Tensor) -> None:
        if second.leading_shape != dpo.leading_shape or second.vocab_size != dpo.vocab_size:
            raise ValueError("the DPO and the second model must give rows of the same positions and vocabulary")
        self.loss, self.dpo, self.second, self.scale = loss, dpo, second, scale

    @property
    def leading_shape(self) -> torch.Size:
        return self.dpo.leading_shape

    @property
    def vocab_size(self) -> int:
        return self.dpo.vocab_size

    def rows(self, index: tuple[torch.Tensor, ...], dtype: torch.dtype) -> WeightedTarget:
        log_probs, weight = self.loss.teacher_distribution(self.dpo.rows(index, dtype), self.second.rows(index, dtype))
        return WeightedTarget(log_probs, weight * self.scale[index].to(dtype))


def weighted_reverse_kl_rows(
    student_rows: torch.Tensor, targets: ChunkTargets, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`weight * KL(softmax(s) || p*)` per row and its gradient w.r.t. the student logits (a `RowLoss` reading a
    `WeightedTarget`)."""
    target = targets.teacher
    assert isinstance(target, WeightedTarget), "AlignDistil's rows need the composed teacher"
    value, grad = DIVERGENCES["reverse_kl"](log_softmax_(student_rows), target.log_probs, 0.0)
    return value * target.weight, (grad.mul_(target.weight[:, None]) if need_grad else None)


def _positive_finite(name: str, value: float) -> float:
    value = check_positive(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class AlignDistilLoss(nn.Module):
    """AlignDistil's per-token reverse KL to a teacher composed of a DPO model and a second model.

    At each response position t (where `mask` is set), with `z_dpo`, `z_2` the two frozen models' logits, each
    variant builds teacher logits `z*` and a weight `c_t` (docs/methods.md, section 7; the authors'
    `--reward_boost_type`):

    - `"adaptive"` (default; `aligndistil`): AlignDistil itself. `z_2` is the REVERSE-DPO model.
      `alpha_t = beta2 * sum_v |p_dpo - p_rev| + 1e-3`, `z* = z_dpo + alpha_t * (z_dpo - z_rev)` (token-adaptive
      extrapolation away from the reverse model), `c_t = beta / alpha_t`.
    - `"fixed"` (`theorem1`): `z_2` is the REFERENCE (SFT) model. `w = beta / beta2`,
      `z* = w * z_dpo + (1 - w) * z_ref` (fixed interpolation, the optimum of section 7's "theorem 1"), `c_t = beta2`.
    - `"fixed_adaptive"` (`theorem1_adaptive`): `z_2` is the REFERENCE model.
      `alpha_t = beta2 * sum_v |p_dpo - p_ref| + 1e-3`, `z* = alpha_t * z_dpo + (1 - alpha_t) * z_ref` (w = alpha_t),
      `c_t = beta / alpha_t`.

    `p = softmax(z)` in `alpha_t` (temperature 1, as in the authors' code). The per-token loss is
    `c_t * KL(pi_s || softmax(z* / T))` with `pi_s = softmax(student_logits)`, the REVERSE KL (student first) over the
    full vocabulary. Only the teacher is divided by T: section 7 and the off-policy trainer leave the student
    untempered (the authors' on-policy trainer also divides the student logits by T; the two agree at the published
    T = 1). No T^2 factor. `alpha_t` (no upper clip) and `z*` carry no gradient; neither teacher tensor receives any.

    A sequence's value is the sum of its per-token losses over its masked positions divided by their number (the
    authors' `--reward_len_norm`, on in all their scripts); the loss is the mean over the sequences. A sequence with no
    masked position is left out of that mean (the authors' code divides 0 by 0 there); an all-masked batch gives 0 with
    zero (finite) gradients. Computed in fp32 (fp64 stays fp64), in the student's compute dtype; the student's gradient
    has the student's dtype.

    Memory: `forward` runs plain autograd on the rows of the masked positions only (prompt rows are never cast or
    softmaxed), the teacher side under no_grad; the graph keeps a few fp32 (N, V) tensors for N masked tokens.
    `from_heads` computes the same loss from the three models' hidden states and heads a chunk at a time.

    Args:
        beta: the DPO models' beta (> 0), the numerator of the adaptive weight and of `w` in `"fixed"`.
        beta2: scale of the adaptive coefficient, or the fixed variant's weight (> 0); the authors use 10 off-policy,
            15 on-policy.
        temperature: T (> 0) of the teacher distribution `softmax(z* / T)`.
        variant: "adaptive" (AlignDistil, with the reverse-DPO model), "fixed" or "fixed_adaptive" (with the
            reference model); see above.

    Shapes:
        student_logits: (B, T, V), any float dtype. dpo_logits, second_logits: (B, T, V), detached here.
        mask: (B, T) bool, integer or float 0/1, set at the response positions to distil. The logits must already be
            ALIGNED with the tokens they predict (the caller shifts them); the authors leave out the first response
            token.
        Returns a scalar.
    """

    consumes = Consumes(OBJECTIVE)

    def __init__(
        self,
        beta: float = 0.1,
        beta2: float = 10.0,
        temperature: float = 1.0,
        variant: AlignDistilVariant = "adaptive",
    ) -> None:
        super().__init__()
        if variant not in TEACHER_RULES:
            raise ValueError(f"variant must be one of {sorted(TEACHER_RULES)}, got {variant!r}")
        self.beta = _positive_finite("beta", beta)
        self.beta2 = _positive_finite("beta2", beta2)
        self.temperature = _positive_finite("temperature", temperature)
        self.variant = variant

    def extra_repr(self) -> str:
        return f"beta={self.beta}, beta2={self.beta2}, temperature={self.temperature}, variant={self.variant!r}"

    @staticmethod
    def _check(student: torch.Tensor, dpo: torch.Tensor, second: torch.Tensor) -> None:
        if student.dim() != 3:
            raise ValueError(f"student logits must be (B, T, V), got {tuple(student.shape)}")
        for name, teacher in (("DPO", dpo), ("second model's", second)):
            if teacher.shape != student.shape:
                raise ValueError(f"{name} logits {tuple(teacher.shape)} != student logits {tuple(student.shape)}")

    def teacher_distribution(
        self, dpo_rows: torch.Tensor, second_rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The variant's teacher log-probabilities `log softmax(z* / T)` (N, V) and per-token weights (N,), no grad.

        Both inputs are (N, V) rows of the two models, in the compute dtype.
        """
        with torch.no_grad():
            z_star, weight = TEACHER_RULES[self.variant](dpo_rows.detach(), second_rows.detach(), self.beta, self.beta2)
            return F.log_softmax(z_star / self.temperature, dim=-1), weight

    def from_heads(
        self,
        student: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        dpo: TeacherHead,
        second: TeacherHead,
        mask: torch.Tensor,
        chunk_size: int,
    ) -> torch.Tensor:
        """The loss with every model's logits computed from its final hidden states and LM head a chunk of tokens at
        a time: no `(B, T, V)` or `(N, V)` tensor of any of the three models exists. `student` is `(hidden (B, T, H),
        head weight (V, H), head bias or None)`, each teacher a `losses.chunked.TeacherHead`. Equal to `forward` on
        the three models' logits (value and gradients)."""
        hidden, weight, bias = student
        valid = as_mask(mask, hidden.shape[:2])  # (B, T)
        counts = valid.sum(dim=-1)  # (B,)
        sequences = (counts > 0).sum().clamp(min=1)
        scale = (1.0 / (counts.clamp(min=1) * sequences)).to(compute_dtype(weight))[:, None].expand(valid.shape)
        labels = torch.where(valid, 0, -100)  # only which positions count is read
        teacher = ComposedTeacher(self, dpo, second, scale)
        total, _ = fused_masked_sum_and_count(
            weighted_reverse_kl_rows, hidden, weight, bias, teacher, labels, -100, chunk_size
        )
        return total

    def forward(
        self,
        student_logits: torch.Tensor,
        dpo_logits: torch.Tensor,
        second_logits: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        self._check(student_logits, dpo_logits, second_logits)
        dtype = compute_dtype(student_logits)
        valid = as_mask(mask, student_logits.shape[:2])  # (B, T)
        counts = valid.sum(dim=-1)  # (B,) masked positions per sequence
        batch_index = valid.nonzero()[:, 0]  # (N,) the sequence of each masked position
        dpo_rows, second_rows = dpo_logits[valid].to(dtype), second_logits[valid].to(dtype)  # (N, V) each
        log_target, weight = self.teacher_distribution(dpo_rows, second_rows)  # (N, V), (N,)
        log_student = F.log_softmax(student_logits[valid].to(dtype), dim=-1)  # (N, V)
        per_token = weight * kl_rows(log_student, log_target)  # (N,) c_t * KL(pi_s || p*)
        per_sequence = torch.zeros(counts.shape, dtype=dtype, device=student_logits.device)
        per_sequence = per_sequence.index_add(0, batch_index, per_token) / counts.clamp(min=1).to(dtype)  # (B,)
        return batch_mean(per_sequence, counts > 0)
