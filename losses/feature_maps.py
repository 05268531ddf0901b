"""Feature-map distillation losses of the CIFAR-100 benchmark: FitNet's hint, attention transfer (AT) and
similarity-preserving KD (SP); docs/methods.md, section 11."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import check_positive
from losses._features import Features, flatten_per_sample, mean_all, sum_over_pairs
from losses.consumes import FEATURES, Consumes

__all__ = ["AttentionTransferLoss", "HintLoss", "SimilarityPreservingLoss"]


class HintLoss(nn.Module):
    """FitNet's hint: `sum over pairs of mse(s, t)`, `mse` = mean over all elements of `(s - t)^2`.

    The student feature is compared as given: a training loop maps it to the teacher's shape first
    (`needs_teacher_shape`; `losses.projector.FeatureProjector` is FitNet's regressor, and `always_project` says
    it is used between equal shapes too, as the released code does). Computed in fp32 for
    fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached. An empty batch gives 0.

    Shapes:
        student_features, teacher_features: `(B, ...)` each, or lists of them (one per paired layer, equal
        lengths); each pair of the same shape. Returns a scalar.
    """

    consumes = Consumes(FEATURES)
    needs_teacher_shape = True
    always_project = True  # the regressor exists even between equal shapes (FitNet's conv + BN + ReLU)

    def forward(self, student_features: Features, teacher_features: Features) -> torch.Tensor:
        return sum_over_pairs(student_features, teacher_features, self.pair_loss, "HintLoss")

    @staticmethod
    def pair_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`mean((s - t)^2)` over all elements of one pair of equal shape; 0 when there are none."""
        if s.shape != t.shape:
            raise ValueError(
                f"HintLoss: student feature {tuple(s.shape)} != teacher feature {tuple(t.shape)}; "
                "project the student to the teacher's shape first"
            )
        return mean_all((s - t).square())


class AttentionTransferLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, 2017), as in the CIFAR-100 benchmark's released code.

    Per pair, the attention map `a(f) = l2normalize(mean_c f^p)`, flattened over H*W per sample, and the loss
    `mean_{b,j} (a_s(b, j) - a_t(b, j))^2`; pairs are summed. `f^p` is `f.pow(p)` as in the released code (the
    paper writes `|f|^p`: the same for even p; a non-integer p on negative activations gives NaN there too).

    Channels may differ. Spatial sizes: the released code pools the taller map to the smaller height, as a square
    (`adaptive_avg_pool2d(f, (H, H))`), so it breaks when the aspect ratios differ. Here each dim is pooled
    independently: both maps are adaptive-avg-pooled to `(min(H_s, H_t), min(W_s, W_t))` (a map already of that
    size is unchanged), which equals the released code whenever that one works. Computed in fp32 for fp16/bf16/fp32
    input (fp64 stays fp64); the teacher is detached. An empty batch gives 0.

    Args:
        p: the power of the activations (> 0); the benchmark uses 2.

    Shapes:
        student_features: (B, C_s, H_s, W_s) or a list of them; teacher_features: (B, C_t, H_t, W_t) or a list of
        as many. Returns a scalar, the unweighted sum over pairs (the benchmark weights it by 1000).
    """

    consumes = Consumes(FEATURES)
    needs_teacher_shape = False

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = check_positive("p", p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def attention(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W): the L2-normalized mean over channels of `f^p`."""
        return F.normalize(flatten_per_sample(feature.pow(self.p).mean(dim=1)), dim=1)

    def forward(self, student_features: Features, teacher_features: Features) -> torch.Tensor:
        return sum_over_pairs(student_features, teacher_features, self.pair_loss, "AttentionTransferLoss")

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`mean_{b,j} (a_s - a_t)^2` for one pair of (B, C, H, W) maps, pooled to the smaller size per dim."""
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(
                f"AttentionTransferLoss expects (B, C, H, W) maps, got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        if s.shape[2:] != size:
            s = F.adaptive_avg_pool2d(s, size)
        if t.shape[2:] != size:
            t = F.adaptive_avg_pool2d(t, size)
        return mean_all((self.attention(s) - self.attention(t)).square())  # mean over (B, H*W)


class SimilarityPreservingLoss(nn.Module):
    """Similarity-preserving KD (Tung & Mori, 2019), as in the CIFAR-100 benchmark's released code.

    Per pair, `X` = the feature flattened per sample (B, N), `G = X X^T` (B, B) with rows L2-normalized, and the loss
    `||G_t - G_s||_F^2 / B^2`; pairs are summed. Student and teacher may differ in every dim but the batch.
    Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached. An empty batch gives 0.

    Shapes:
        student_features: (B, ...) or a list of them; teacher_features: (B, ...) or a list of as many. Returns a
        scalar, the unweighted sum over pairs (the benchmark weights it by 3000).
    """

    consumes = Consumes(FEATURES)
    needs_teacher_shape = False

    def forward(self, student_features: Features, teacher_features: Features) -> torch.Tensor:
        return sum_over_pairs(student_features, teacher_features, self.pair_loss, "SimilarityPreservingLoss")

    @staticmethod
    def pair_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`||G_t - G_s||_F^2 / B^2` for one pair; 0 for an empty batch."""
        x_s, x_t = flatten_per_sample(s), flatten_per_sample(t)  # (B, N_s), (B, N_t)
        g_s = F.normalize(x_s @ x_s.T, dim=1)  # (B, B), rows L2-normalized
        g_t = F.normalize(x_t @ x_t.T, dim=1)
        return (g_t - g_s).square().sum() / max(s.shape[0] ** 2, 1)
