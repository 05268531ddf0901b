"""Online draft distillation for speculative decoding (SpecVLM, 2025; EAGLE lineage); docs/methods.md, section 8.

A one-layer draft predicts the frozen target model's next last hidden state `f_{t+1}`; both go through the target's
frozen LM head. The draft is trained on `ce_weight * CE + feature_weight * SmoothL1`: the soft cross-entropy from the
target's next-token distribution to the draft's, and the SmoothL1 distance between the predicted and the real features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import as_mask, check_non_negative, prepare_logits
from losses.chunked import ChunkTargets, chunk_sums, fused_masked_sum_and_count, log_softmax_
from losses.consumes import OBJECTIVE, Consumes
from losses.teacher_rows import TeacherHead

__all__ = ["MASK_EPS", "DraftDistillLoss", "soft_cross_entropy_rows"]

# Added to the number of masked positions in both parts' denominators (docs/methods.md, section 8, as in SpecVLM/EAGLE):
# an all-masked batch gives 0 / 1e-5 = 0, not 0 / 0.
MASK_EPS = 1e-5


def soft_cross_entropy_rows(
    student_rows: torch.Tensor, targets: ChunkTargets, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`-sum_v p_v log q_v` per row (p the teacher's softmax, q the student's) and its gradient `q - p` w.r.t. the
    student logits (a `losses.chunked.RowLoss`)."""
    teacher_rows = targets.teacher
    assert isinstance(teacher_rows, torch.Tensor), "the soft cross-entropy needs the teacher's logits"
    p = log_softmax_(teacher_rows).exp_()  # (c, V)
    log_q = log_softmax_(student_rows)  # (c, V)
    value = -(p * log_q).sum(-1)
    return value, (log_q.exp_().sub_(p) if need_grad else None)


class DraftDistillLoss(nn.Module):
    """SpecVLM's draft loss: `ce_weight * CE + feature_weight * SmoothL1` over the masked positions.

    At each position t where `mask` is set, with `p = softmax(target_logits[t])` (temperature 1) and
    `log q = log_softmax(draft_logits[t])`:

    - CE: the soft cross-entropy `-sum_v p_v * log q_v` (not a KL: the target's entropy is included).
    - SmoothL1: `smooth_l1(draft_hidden[t] - target_hidden[t])` with beta 1 (`0.5 d^2` for `|d| < 1`, else
      `|d| - 0.5`), averaged over the H features.

    Each part is its sum over the masked positions divided by `mask.sum() + MASK_EPS` (a token mean over the whole
    batch, not per sequence). `parts` returns the two unweighted parts (to log them), `combine` weights them, `forward`
    is `combine(*parts(...))`. No temperature, no T^2 factor.

    Only the masked rows are read, cast and differentiated: whatever the other positions hold (padding, prompt or image
    tokens, even inf or NaN) does not change the loss, and they get zero gradient. An all-masked batch gives exactly 0
    with zero (finite) gradients. Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64), each part in its draft
    tensor's compute dtype; the draft gradients keep the draft dtype. The target tensors are detached and never receive
    gradient.

    Args:
        ce_weight: weight of the soft cross-entropy (finite, >= 0); 0.1 in SpecVLM.
        feature_weight: weight of the SmoothL1 feature term (finite, >= 0); 1.0 in SpecVLM. Not both 0.

    Shapes:
        draft_logits, target_logits: (B, T, V), any float dtype; the LM head applied to the draft's and the target's
            features.
        draft_hidden, target_hidden: (B, T, H), the draft's predicted and the target's real last hidden states.
        mask: (B, T) bool, integer or float 0/1, set at the response tokens to distil (not prompt, image tokens or
            padding).
        Position t of the draft must already be ALIGNED with position t of the targets (the caller shifts).
        Returns a scalar (`parts`: two scalars).
    """

    consumes = Consumes(OBJECTIVE)

    def __init__(self, ce_weight: float = 0.1, feature_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = check_non_negative("ce_weight", ce_weight)
        self.feature_weight = check_non_negative("feature_weight", feature_weight)
        if self.ce_weight == 0 and self.feature_weight == 0:
            raise ValueError("ce_weight and feature_weight are both 0: the loss would be 0 whatever the draft")

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, feature_weight={self.feature_weight}"

    @staticmethod
    def _check(
        draft_logits: torch.Tensor,
        target_logits: torch.Tensor,
        draft_hidden: torch.Tensor,
        target_hidden: torch.Tensor,
    ) -> None:
        if draft_logits.dim() != 3 or draft_hidden.dim() != 3:
            raise ValueError(
                f"draft logits and hidden states must be (B, T, V) and (B, T, H), got {tuple(draft_logits.shape)} "
                f"and {tuple(draft_hidden.shape)}"
            )
        if target_logits.shape != draft_logits.shape:
            raise ValueError(f"target logits {tuple(target_logits.shape)} != draft logits {tuple(draft_logits.shape)}")
        if target_hidden.shape != draft_hidden.shape:
            raise ValueError(f"target hidden {tuple(target_hidden.shape)} != draft hidden {tuple(draft_hidden.shape)}")
        if draft_hidden.shape[:2] != draft_logits.shape[:2]:
            raise ValueError(
                f"hidden states {tuple(draft_hidden.shape)} and logits {tuple(draft_logits.shape)} differ in (B, T)"
            )

    def parts(
        self,
        draft_logits: torch.Tensor,
        target_logits: torch.Tensor,
        draft_hidden: torch.Tensor,
        target_hidden: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted (CE, SmoothL1) scalars, each divided by `mask.sum() + MASK_EPS`; same arguments as forward."""
        self._check(draft_logits, target_logits, draft_hidden, target_hidden)
        valid = as_mask(mask, draft_logits.shape[:2])  # (B, T)
        # the masked rows only, in the compute dtype, the target detached: (N, V) and (N, H) for N masked positions
        draft_rows, target_rows = prepare_logits(draft_logits[valid], target_logits[valid])
        draft_feats, target_feats = prepare_logits(draft_hidden[valid], target_hidden[valid])
        ce = -(F.softmax(target_rows, dim=-1) * F.log_softmax(draft_rows, dim=-1)).sum(dim=-1)  # (N,)
        feature = F.smooth_l1_loss(draft_feats, target_feats, reduction="none", beta=1.0).mean(dim=-1)  # (N,)
        count = valid.sum()  # a tensor: no host-device sync; MASK_EPS added in each part's dtype
        return ce.sum() / (count.to(ce.dtype) + MASK_EPS), feature.sum() / (count.to(feature.dtype) + MASK_EPS)

    def parts_from_head(
        self,
        draft_hidden: torch.Tensor,
        target_hidden: torch.Tensor,
        head: nn.Linear,
        mask: torch.Tensor,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`parts` with the logits of both sides computed through the shared `head` a chunk of tokens at a time:
        neither `[B, T, V]` tensor exists. Also returns the number of masked positions where the draft's top-1 token
        equals the target's (no gradient). Equal to `parts(head(draft_hidden), head(target_hidden), ...)`."""
        valid = as_mask(mask, draft_hidden.shape[:2])
        positions = torch.where(valid, 0, -100)  # (B, T): a label per position, only its mask is read
        teacher = TeacherHead(target_hidden, head.weight, head.bias)
        ce, count = fused_masked_sum_and_count(
            soft_cross_entropy_rows, draft_hidden, head.weight, head.bias, teacher, positions, -100, chunk_size
        )

        def agree(rows: torch.Tensor, targets: ChunkTargets) -> dict[str, torch.Tensor]:
            return {"agree": (rows.argmax(-1) == targets.teacher.argmax(-1)).sum()}  # type: ignore[union-attr]

        agreeing = chunk_sums(agree, (draft_hidden, head.weight, head.bias), teacher, positions, -100, chunk_size)[0]
        draft_feats, target_feats = prepare_logits(draft_hidden[valid], target_hidden[valid])
        feature = F.smooth_l1_loss(draft_feats, target_feats, reduction="none", beta=1.0).mean(dim=-1)
        total = valid.sum()
        agreed = agreeing.get("agree", torch.zeros((), device=draft_hidden.device))
        return ce / (count + MASK_EPS), feature.sum() / (total.to(feature.dtype) + MASK_EPS), agreed

    def combine(self, ce: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """`ce_weight * ce + feature_weight * feature`, for a caller that logged the parts from `parts`."""
        return self.ce_weight * ce + self.feature_weight * feature

    def forward(
        self,
        draft_logits: torch.Tensor,
        target_logits: torch.Tensor,
        draft_hidden: torch.Tensor,
        target_hidden: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.combine(*self.parts(draft_logits, target_logits, draft_hidden, target_hidden, mask))
