"""Hidden-state distillation for language models: MSE or cosine distance between paired per-token hidden states
over the distilled positions (DistillKit's hs_mse / hs_cosine); docs/methods.md, section 11."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import as_mask, batch_mean
from losses._features import Features, feature_pairs, prepare_pair
from losses.consumes import TOKEN_FEATURES, Consumes

__all__ = ["HiddenStateKind", "HiddenStateLoss"]

HiddenStateKind = Literal["mse", "cosine"]
COSINE_EPS = 1e-8  # F.cosine_similarity's default: a zero vector has cosine 0 with anything


class HiddenStateLoss(nn.Module):
    """Distance between the student's and the teacher's hidden states of paired layers, over the masked positions.

    Per pair of (B, T, D) hidden states, over the positions where `mask` is True:

    - "mse": the mean over those positions and the D dims of `(s - t)^2`;
    - "cosine": the mean over those positions of `1 - cos(s, t)` along D.

    The pairs are averaged, not summed (unlike the CIFAR feature losses), so that the loss weight in a recipe means
    the same whatever the number of mapped layers. The student's states are compared as given: a training loop maps
    them to the teacher's width first (`needs_teacher_shape`; `losses.projector.FeatureProjector` is a linear map on
    D for tokens). An all-masked or empty batch gives 0, still in the student's graph. Computed in fp32 for
    fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached.

    Args:
        kind: "mse" or "cosine".

    Shapes:
        student_hidden, teacher_hidden: (B, T, D) each, or lists of them (one per paired layer, equal lengths),
        each pair of the same shape; mask: (B, T), True (or 1) where a position is distilled. Returns a scalar.
    """

    consumes = Consumes(TOKEN_FEATURES)
    needs_teacher_shape = True

    def __init__(self, kind: HiddenStateKind = "mse") -> None:
        super().__init__()
        if kind not in get_args(HiddenStateKind):
            raise ValueError(f"kind must be one of {list(get_args(HiddenStateKind))}, got {kind!r}")
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, student_hidden: Features, teacher_hidden: Features, mask: torch.Tensor) -> torch.Tensor:
        pairs = feature_pairs(student_hidden, teacher_hidden, "HiddenStateLoss")
        values = [self.pair_loss(*prepare_pair(s, t, "HiddenStateLoss"), mask) for s, t in pairs]
        return sum(values[1:], values[0]) / len(values)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss of one pair of (B, T, D) hidden states over the positions where the (B, T) `mask` is True."""
        if s.dim() != 3 or s.shape != t.shape:
            raise ValueError(
                f"HiddenStateLoss expects (B, T, D) student and teacher states of one shape (project the student "
                f"first), got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if tuple(mask.shape) != tuple(s.shape[:2]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match the (B, T) {tuple(s.shape[:2])} of the states")
        valid = as_mask(mask, tuple(s.shape[:2]))  # (B, T) bool
        if self.kind == "mse":
            per_position = (s - t).square().mean(dim=-1)  # (B, T)
        else:
            per_position = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=COSINE_EPS)  # (B, T)
        return batch_mean(per_position, valid)
