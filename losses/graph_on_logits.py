"""Graph-on-Logits Distillation, GLD (InfiGFusion, 2025); docs/methods.md, section 6.

Per sequence, the kept (top-k, transformed) logits of each position define a co-activation graph over the vocabulary,
`A = sum_t m_t z~_t z~_t^T / n`. GLD compares the teacher's and the student's graphs through their sorted weighted
degrees `f(i) = sum_j A_ij`, which needs O(T * k) memory and time: neither the V x V graph nor a V-wide degree vector
is ever built. Only the at most T * k channels some kept logit touches have a nonzero degree, so the degrees are
summed per sample in a compact (B, T * k) buffer (`weighted_degrees`), and `sorted_l1` compares them exactly as the
zero-padded full-vocabulary vectors would be compared.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import as_mask, batch_mean, check_flag, check_int, compute_dtype
from losses.consumes import SEQUENCE_LOGITS, Consumes

__all__ = ["GraphOnLogitsLoss", "Transform", "sorted_l1", "topk_transform", "weighted_degrees"]

Transform = Literal["zscore", "softmax", "none"]
ZSCORE_EPS = 1e-7  # the eps of `losses._common.zscore` (added to the std); a test pins that the two agree


def topk_transform(logits: torch.Tensor, k: int, transform: Transform = "zscore") -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k transformed logits of each row, without a dense transformed copy: `(values, indices)`, each (..., k).

    All three transforms are increasing in each logit for a fixed row, so the top-k channels of the transformed row
    are those of the raw row: the indices come from `topk` on the logits, and the transform is evaluated at the kept
    channels only, from row statistics. The values equal `zscore(logits)` (`losses._common`) resp. `softmax(logits)`
    resp. the logits at those channels. Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64).

    Args:
        logits: (..., V).
        k: how many channels to keep per row; `min(k, V)` are kept.
        transform: "zscore" (over the vocabulary, unbiased std + 1e-7, needs V >= 2), "softmax" or "none".
    """
    x = logits.to(compute_dtype(logits))  # (..., V); no copy for fp32/fp64 input
    top, index = x.topk(min(k, x.shape[-1]), dim=-1)  # (..., k)
    if transform == "zscore":
        if x.shape[-1] < 2:
            raise ValueError(f"transform 'zscore' needs a vocabulary of at least 2 (unbiased std), got {x.shape}")
        if x.numel() == 0:  # torch.std would warn about 0 degrees of freedom
            return top, index
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1): the same ops as `zscore`, so the same values
        std = x.std(dim=-1, keepdim=True)  # unbiased, as `zscore`; zero (not NaN) backward for a constant row
        return (top - mean) / (std + ZSCORE_EPS), index
    if transform == "softmax":
        return (top - x.logsumexp(dim=-1, keepdim=True)).exp(), index
    return top, index


def weighted_degrees(
    values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None = None, normalize: bool = True
) -> torch.Tensor:
    """Weighted degrees `f(i) = sum_t m_t z~_t[i] * (1^T z~_t)` of each sample's graph, in compact form.

    Row b of the result holds the nonzero degrees of sample b (one entry per channel that some position keeps),
    followed by zeros, in no particular order: as a multiset with zeros added it is the full degree vector `f`.

    Args:
        values: (B, T, k) kept values `z~_t` at the kept channels.
        index: (B, T, k) their vocabulary channels; distinct within a position.
        mask: (B, T) position weights `m_t` (True/1 = distilled), or None for all positions.
        normalize: divide by the number of valid positions `n = sum_t m_t` of the sample (an empty sample stays 0).

    Returns:
        (B, T * k) degrees.
    """
    batch, length, k = values.shape
    weight = values.sum(dim=-1, keepdim=True)  # (B, T, 1): 1^T z~_t
    if mask is not None:
        weight = weight * mask.to(values.dtype)[..., None]
    contribution = (values * weight).reshape(batch, length * k)  # (B, T*k): m_t z~_t[i] 1^T z~_t
    if normalize:
        count = values.new_full((batch,), length) if mask is None else mask.to(values.dtype).sum(dim=-1)
        contribution = contribution / count.clamp(min=1)[:, None]
    channel, order = index.reshape(batch, length * k).sort(dim=-1)  # (B, T*k): equal channels side by side
    first = torch.ones_like(channel, dtype=torch.bool)
    first[:, 1:] = channel[:, 1:] != channel[:, :-1]  # a new channel starts
    slot = first.long().cumsum(dim=-1) - 1  # (B, T*k): one slot per distinct channel of the sample
    return torch.zeros_like(contribution).scatter_add(-1, slot, contribution.gather(-1, order))


def sorted_l1(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`sum_i |sort(f_s)_i - sort(f_t)_i|` of two zero-padded feature vectors, per row, from their nonzero entries.

    Section 6 pads both vectors to a common length (max(Vs, Vt)) and sorts them descending: (positive entries, zeros,
    negative entries). The value does not depend on the padded length L, as long as L is at least the number of
    nonzero entries: for any two numbers `|a - b| = |a+ - b+| + |a- - b-|` (`x+ = max(x, 0)`, `x- = max(-x, 0)`), and
    sorting commutes with both parts, so the sum is the sorted L1 of the positive parts aligned from the top plus that
    of the negative parts aligned from the bottom, and more zeros only lengthen the middle. So the compact rows,
    zero-padded to their common width, give exactly the value of the full-vocabulary vectors.

    Args:
        student: (B, Ns), teacher: (B, Nt) features; zeros stand for channels without one.

    Returns:
        (B,) the sorted L1 distance of each row pair.
    """
    width = max(student.shape[-1], teacher.shape[-1])
    s = F.pad(student, (0, width - student.shape[-1])).sort(dim=-1, descending=True).values  # (B, width)
    t = F.pad(teacher, (0, width - teacher.shape[-1])).sort(dim=-1, descending=True).values  # (B, width)
    return (s - t).abs().sum(dim=-1)


class GraphOnLogitsLoss(nn.Module):
    """Graph-on-Logits Distillation: sorted L1 between the weighted degrees of teacher and student logit graphs.

    Per sample and model: transform each position's logits, keep the top-k values (zero the rest): `z~_t`; the graph
    `A = sum_t m_t z~_t z~_t^T / n` (n valid positions) has weighted degrees `f(i) = sum_t m_t z~_t[i] (1^T z~_t) / n`;
    zero-pad both degree vectors to a common length, sort them descending and take `sum_i |f_s(i) - f_t(i)|`; mean
    over the samples that have a valid position (student or teacher); a batch without any gives 0 (zero gradient).
    The graphs live on each model's own vocabulary: teacher and student may have different vocabularies (Vs != Vt)
    and sequence lengths, and the loss is unchanged by relabelling the vocabulary channels of either. It lower-bounds
    (n^2 times) Gromov-Wasserstein between the two graphs with L1 cost and uniform marginals, so in particular the
    minimum over node permutations `pi` of `sum_ij |A_s[i, j] - A_t[pi(i), pi(j)]`.

    O(B * T * k) memory and time beyond the logits (and an fp32 copy of fp16/bf16 logits): neither the V x V graph nor
    a dense transformed copy is built. Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64); the teacher is
    detached. The gradient reaches the student logits through the kept values (top-k selection is piecewise
    constant). In the paper the term sits beside SFT and a token-wise sorted top-k L1 (ULD-style) term:
    `(1 - lambda) * L_SFT + lambda * (L_ULD + gamma * L_GLD)`; the recipe's weights carry lambda and gamma.

    Args:
        top_k: channels kept per position (>= 1); a vocabulary smaller than this keeps all its channels.
        transform: applied per position over the vocabulary before the top-k: "zscore" (default, the paper's),
            "softmax" (probabilities: nonnegative graph) or "none" (raw logits).
        normalize: divide each graph by its number of valid positions (docs/methods.md, section 6, step 2); False
            keeps the sum.

    Shapes:
        student_logits: (B, Ts, Vs); teacher_logits: (B, Tt, Vt).
        student_mask: (B, Ts), teacher_mask: (B, Tt): 1 at the positions to distill (bool, integer or float 0/1),
            or None for all.
        Returns a scalar, the unweighted term averaged over the samples.
    """

    consumes = Consumes(SEQUENCE_LOGITS)

    def __init__(self, top_k: int = 10, transform: Transform = "zscore", normalize: bool = True) -> None:
        super().__init__()
        self.top_k = check_int("top_k", top_k, minimum=1)
        if transform not in get_args(Transform):
            raise ValueError(f"transform must be one of {', '.join(get_args(Transform))}, got {transform!r}")
        self.transform = transform
        self.normalize = check_flag("normalize", normalize)

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, transform={self.transform!r}, normalize={self.normalize}"

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_mask: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if student_logits.dim() != 3 or teacher_logits.dim() != 3:
            raise ValueError(
                f"GraphOnLogitsLoss expects (B, T, V) logits, got student {tuple(student_logits.shape)} "
                f"and teacher {tuple(teacher_logits.shape)}"
            )
        if student_logits.shape[0] != teacher_logits.shape[0]:
            raise ValueError(
                f"batch sizes differ: student {student_logits.shape[0]}, teacher {teacher_logits.shape[0]}"
            )
        if student_mask is not None:
            student_mask = as_mask(student_mask, student_logits.shape[:2], "student_mask")
        if teacher_mask is not None:
            teacher_mask = as_mask(teacher_mask, teacher_logits.shape[:2], "teacher_mask")
        teacher = teacher_logits.detach().to(compute_dtype(student_logits))
        student_kept = topk_transform(student_logits, self.top_k, self.transform)
        return self.from_kept(
            student_kept, topk_transform(teacher, self.top_k, self.transform), student_mask, teacher_mask
        )

    def from_kept(
        self,
        student_kept: tuple[torch.Tensor, torch.Tensor],
        teacher_kept: tuple[torch.Tensor, torch.Tensor],
        student_mask: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss from each side's kept `(values, indices)`, `(B, T, k)` each, as `topk_transform` gives them.

        For callers that never hold the full logits: the kept values can be computed a chunk of positions at a time
        from the hidden states and the LM head (`losses.chunked.head_rows_map`), or read from stored top-k
        log-probabilities. The teacher's values are detached here.
        """
        f_s = weighted_degrees(*student_kept, student_mask, self.normalize)
        teacher_values = teacher_kept[0].detach().to(student_kept[0].dtype)
        f_t = weighted_degrees(teacher_values, teacher_kept[1], teacher_mask, self.normalize)
        per_sample = sorted_l1(f_s, f_t)  # (B,)
        return batch_mean(
            per_sample, _has_position(student_kept[0], student_mask) | _has_position(teacher_values, teacher_mask)
        )


def _has_position(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) whether the sample has a valid position (a nonzero mask entry; any position when there is no mask)."""
    if mask is None:
        return torch.full(logits.shape[:1], logits.shape[1] > 0, dtype=torch.bool, device=logits.device)
    return (mask != 0).any(dim=-1)
