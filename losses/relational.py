"""Relational feature distillation of the CIFAR-100 benchmark: relational KD (RKD) and probabilistic knowledge
transfer (PKT), both on per-sample embeddings; docs/methods.md, section 11."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import check_non_negative, check_positive
from losses._features import Features, flatten_per_sample, graph_zero, mean_all, sum_over_pairs
from losses.consumes import FEATURES, Consumes

__all__ = ["PKTLoss", "RKDLoss", "pairwise_distances", "unit_differences"]

DISTANCE_EPS = 1e-12  # the released code's clamp of the squared distance, and F.normalize's eps


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, the diagonal exactly 0.

    The squared distances are clamped to `DISTANCE_EPS` before the square root, as the released code does: rows
    that coincide get a distance of 1e-6 and a zero (not infinite) gradient; the diagonal is masked to 0.
    """
    square = x.square().sum(dim=1)  # (B,)
    d2 = (square[:, None] + square[None, :] - 2 * x @ x.T).clamp(min=DISTANCE_EPS)  # (B, B)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def unit_differences(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B, D): `u(x_j - x_i)` at `[i, j]`, L2-normalized; 0 (with a zero gradient) where the
    difference has a norm of at most `DISTANCE_EPS` (the diagonal, coinciding rows)."""
    diff = x[None, :, :] - x[:, None, :]  # (B, B, D): [i, j] = x_j - x_i
    norm = torch.linalg.vector_norm(diff, dim=2, keepdim=True)  # (B, B, 1)
    keep = norm > DISTANCE_EPS
    return torch.where(keep, diff / torch.where(keep, norm, 1.0), 0.0)


class RKDLoss(nn.Module):
    """Relational KD (Park et al., CVPR 2019), as in the CIFAR-100 benchmark's released code.

    On embeddings flattened per sample to (B, D):

    - distance: `d_ij = ||x_i - x_j||`, divided by the mean of the positive entries (teacher and student each by
      their own); `mean over all B^2 entries of smooth_l1(d_s, d_t)` (beta 1).
    - angle: `a_ijk = <u(x_j - x_i), u(x_k - x_i)>` over all B^3 triples, u = L2-normalize;
      `mean over all B^3 entries of smooth_l1(a_s, a_t)`. Degenerate entries are 0 on both sides.

    `L = distance_weight * distance + angle_weight * angle`, summed over pairs of features.

    Divergences from the released code, which gives NaN at batch 1 (a mean over no positive distances): at B <= 1
    the loss is 0 (in the student's graph). Squared distances are clamped to 1e-12 before the square root and the
    diagonal masked (as the released code does), so coinciding rows get a finite (zero) distance gradient and a
    distance of 1e-6 that counts among the positive entries of the mean, as there. A difference
    `x_j - x_i` of norm <= 1e-12 gets a unit vector of 0 with a zero gradient, where `F.normalize` divides by 1e-12
    (a 1e12-scaled gradient when two rows coincide). A term whose weight is 0 is not computed (the angle term costs
    O(B^2 D) memory). Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64); the teacher is detached.

    Args:
        distance_weight: weight of the distance term (>= 0); the benchmark uses 25.
        angle_weight: weight of the angle term (>= 0); the benchmark uses 50.

    Shapes:
        student_features: (B, ...) or a list of them; teacher_features: (B, ...) or a list of as many, any
        dims but the batch. Returns a scalar, the weighted terms summed over pairs (the benchmark weights it by 1).
    """

    consumes = Consumes(FEATURES)
    needs_teacher_shape = False

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        self.distance_weight = check_non_negative("distance_weight", distance_weight)
        self.angle_weight = check_non_negative("angle_weight", angle_weight)

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"

    def forward(self, student_features: Features, teacher_features: Features) -> torch.Tensor:
        return sum_over_pairs(student_features, teacher_features, self.pair_loss, "RKDLoss")

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The weighted distance and angle terms of one pair of (B, ...) features."""
        loss = graph_zero(s)
        if s.shape[0] <= 1:  # no pair of samples: nothing to relate
            return loss
        x_s, x_t = flatten_per_sample(s), flatten_per_sample(t)  # (B, D_s), (B, D_t)
        if self.distance_weight > 0:
            d_s, d_t = pairwise_distances(x_s), pairwise_distances(x_t)  # (B, B)
            d_s = d_s / (d_s.sum() / (d_s > 0).sum().clamp(min=1))  # divided by the mean of the positive entries
            d_t = d_t / (d_t.sum() / (d_t > 0).sum().clamp(min=1))
            loss = loss + self.distance_weight * F.smooth_l1_loss(d_s, d_t, beta=1.0)
        if self.angle_weight > 0:
            u_s, u_t = unit_differences(x_s), unit_differences(x_t)  # (B, B, D)
            a_s = u_s @ u_s.transpose(1, 2)  # (B, B, B): [i, j, k] = <u(x_j - x_i), u(x_k - x_i)>
            a_t = u_t @ u_t.transpose(1, 2)
            loss = loss + self.angle_weight * F.smooth_l1_loss(a_s, a_t, beta=1.0)
        return loss


class PKTLoss(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as in the CIFAR-100 benchmark's released code.

    On embeddings flattened per sample: `n = x / (||x|| + eps)`, `S = (n n^T + 1) / 2` (B, B), rows normalized to
    sum 1 (P for the teacher, Q for the student), and `L = mean_{i,j} P_ij log((P_ij + eps) / (Q_ij + eps))`, a mean
    over the B^2 entries (not a row sum); summed over pairs. An all-zero row gets `n = 0` and a finite gradient (the
    released code's `sqrt(sum x^2)` has an infinite derivative there). Computed in fp32 for fp16/bf16/fp32 input
    (fp64 stays fp64); the teacher is detached. An empty batch gives 0.

    Args:
        eps: added to the norms and inside the log ratio (> 0); the released code uses 1e-7.

    Shapes:
        student_features: (B, ...) or a list of them; teacher_features: (B, ...) or a list of as many, any
        dims but the batch. Returns a scalar, the unweighted sum over pairs (the benchmark weights it by 30000).
    """

    consumes = Consumes(FEATURES)
    needs_teacher_shape = False

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = check_positive("eps", eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"

    def forward(self, student_features: Features, teacher_features: Features) -> torch.Tensor:
        return sum_over_pairs(student_features, teacher_features, self.pair_loss, "PKTLoss")

    def similarity_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, B): the cosine similarities mapped to [0, 1], each row normalized to sum 1."""
        flat = flatten_per_sample(x)  # (B, D)
        n = flat / (torch.linalg.vector_norm(flat, dim=1, keepdim=True) + self.eps)
        similarity = (n @ n.T + 1.0) / 2.0  # (B, B)
        return similarity / similarity.sum(dim=1, keepdim=True)

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`mean_{i,j} P log((P + eps) / (Q + eps))` for one pair; 0 for an empty batch."""
        q, p = self.similarity_rows(s), self.similarity_rows(t)
        return mean_all(p * torch.log((p + self.eps) / (q + self.eps)))
