"""AMU-Tuning (Tang et al., CVPR 2024), docs/methods.md, section 9: a logit bias for few-shot CLIP learned on the
features of an auxiliary model, fused with CLIP's zero-shot logits by a confidence factor.

`AMULogitBias` is the trainable head (a bias-free linear classifier on normalized auxiliary features, initialized to
the few-shot class means); `amu_uncertainty` is the kurtosis-based factor; `AMULoss` is the multi-branch loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from losses._common import check_int, check_non_negative, check_target, compute_dtype, zscore
from losses.consumes import OBJECTIVE, Consumes

__all__ = ["AMULogitBias", "AMULoss", "amu_uncertainty", "class_means"]

UNCERTAINTIES = ("kurtosis", "none")
KURTOSIS_SCALE = 250.0  # kappa is divided by this before the power (the authors' constant)
KURTOSIS_FLOOR = 1e-3  # u <= (1e-3 / 250) ** -power: 144 at power 0.4


def amu_uncertainty(clip_logits: torch.Tensor, power: float = 0.4) -> torch.Tensor:
    """The confidence factor `u = (kappa / 250) ** (-power)`, `[B, C] -> [B, 1]`, without gradient.

    `kappa` is the kurtosis of `softmax(clip_logits)` over the classes: the mean of `z ** 4`, `z` the z-scored
    probabilities (unbiased std). A confident (peaked) zero-shot prediction has a large kurtosis and gets a small
    factor, so the auxiliary branch moves it less; a flat one gets a large factor. A one-hot prediction over 1000
    classes gives kappa ~ 996 and u ~ 0.575 at power 0.4.
    """
    power = check_non_negative("power", power)
    if clip_logits.dim() != 2 or clip_logits.shape[1] < 2:
        raise ValueError(f"clip_logits must be (B, C) with C >= 2, got {tuple(clip_logits.shape)}")
    probabilities = clip_logits.detach().to(compute_dtype(clip_logits)).softmax(dim=-1)
    centered = probabilities - probabilities.mean(dim=-1, keepdim=True)
    std = probabilities.std(dim=-1, keepdim=True)  # unbiased; no eps: it would shift kappa by ~1e-6 relative
    kurtosis = (centered / std).pow(4).mean(dim=-1, keepdim=True)  # (B, 1)
    # A constant row (uniform prediction) has std 0 and no kurtosis: the floor keeps its factor finite.
    kurtosis = torch.where(std > 0, kurtosis, 0.0).clamp(min=KURTOSIS_FLOOR)
    return (kurtosis / KURTOSIS_SCALE).pow(-power)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`[C, D]` mean of the L2-normalized features of each class (fp32 or wider).

    For a k-shot set (k features per class) this equals the authors' `sum_{y_i = c} f_i / (N / C)`; with unequal
    counts each class is divided by its own count. Every class needs at least one feature.
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (N, D) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"every class needs at least one feature; none for classes {missing[:10]}")
    normalized = F.normalize(features.detach().to(compute_dtype(features)), dim=-1)
    sums = torch.zeros(num_classes, features.shape[1], dtype=normalized.dtype).index_add_(0, labels, normalized)
    return sums / counts.unsqueeze(1).to(sums.dtype)


class AMULogitBias(nn.Module):
    """The AMU head: `aux = zscore(normalize(f_aux) @ W^T)`, `fused = clip + alpha * u * aux`.

    `W` (`[C, D]`, no bias, the only parameter) starts as the class means of the normalized few-shot auxiliary
    features (`class_means`); `u` is `amu_uncertainty(clip_logits, power)` with `uncertainty="kurtosis"`, 1 with
    `"none"` (the authors' released recipe leaves it off). The z-score uses the unbiased std.

    Args:
        features: (N, D) auxiliary features of the few-shot training set.
        labels: (N,) their classes.
        num_classes: C.
        alpha: weight of the auxiliary logits in the fusion (>= 0).
        uncertainty: "kurtosis" or "none".
        power: exponent of the kurtosis factor.

    Shapes:
        forward(clip_logits (B, C), aux_features (B, D)) -> (fused_logits (B, C), aux_logits (B, C)), in fp32 (or
        wider); gradient reaches `W` (and `clip_logits` through the sum, not through `u`).
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        alpha: float = 0.5,
        uncertainty: str = "kurtosis",
        power: float = 0.4,
    ) -> None:
        super().__init__()
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {uncertainty!r}")
        self.alpha = check_non_negative("alpha", alpha)
        self.power = check_non_negative("power", power)
        self.uncertainty = uncertainty
        self.weight = nn.Parameter(class_means(features, labels, num_classes))  # (C, D), fp32 (fp64 stays fp64)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        classes, dim = self.weight.shape
        return f"classes={classes}, dim={dim}, alpha={self.alpha}, uncertainty={self.uncertainty!r}, power={self.power}"

    def aux_logits(self, aux_features: torch.Tensor) -> torch.Tensor:
        """`zscore(normalize(aux_features) @ W^T)`: `[B, D] -> [B, C]`."""
        if aux_features.dim() != 2 or aux_features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"aux_features must be (B, {self.weight.shape[1]}), got {tuple(aux_features.shape)}")
        dtype = torch.promote_types(compute_dtype(aux_features), self.weight.dtype)
        normalized = F.normalize(aux_features.to(dtype), dim=-1)
        return zscore(normalized @ self.weight.to(dtype).t())

    def forward(self, clip_logits: torch.Tensor, aux_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if clip_logits.dim() != 2 or clip_logits.shape[1] != self.num_classes:
            raise ValueError(f"clip_logits must be (B, {self.num_classes}), got {tuple(clip_logits.shape)}")
        if clip_logits.shape[0] != aux_features.shape[0]:
            raise ValueError(f"clip_logits has {clip_logits.shape[0]} rows, aux_features {aux_features.shape[0]}")
        aux = self.aux_logits(aux_features)
        clip = clip_logits.to(aux.dtype)
        if self.uncertainty == "kurtosis":
            return clip + self.alpha * amu_uncertainty(clip, self.power) * aux, aux
        return clip + self.alpha * aux, aux


class AMULoss(nn.Module):
    """`lam * CE(fused_logits, y) + (1 - lam) * CE(aux_logits, y)`, each the batch mean (0 for an empty batch).

    `parts` returns the two cross-entropies unweighted (to log them), `combine` weights them.

    Args:
        lam: weight of the fused branch, in [0, 1]; the authors use 0.35.

    Shapes:
        fused_logits, aux_logits: (B, C); target: (B,) class indices. Returns a scalar.
    """

    consumes = Consumes(OBJECTIVE)

    def __init__(self, lam: float = 0.35) -> None:
        super().__init__()
        lam = check_non_negative("lam", lam)
        if lam > 1:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.lam = lam

    def extra_repr(self) -> str:
        return f"lam={self.lam}"

    def parts(
        self, fused_logits: torch.Tensor, aux_logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if fused_logits.shape != aux_logits.shape:
            raise ValueError(f"fused logits {tuple(fused_logits.shape)} != aux logits {tuple(aux_logits.shape)}")
        target = check_target(fused_logits, target, "AMULoss")
        return tuple(_cross_entropy(logits, target) for logits in (fused_logits, aux_logits))  # type: ignore[return-value]

    def combine(self, fused_ce: torch.Tensor, aux_ce: torch.Tensor) -> torch.Tensor:
        return self.lam * fused_ce + (1 - self.lam) * aux_ce

    def forward(self, fused_logits: torch.Tensor, aux_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.combine(*self.parts(fused_logits, aux_logits, target))


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE in the compute dtype; 0 (connected to the graph) for an empty batch."""
    x = logits.to(compute_dtype(logits))
    return F.cross_entropy(x, target, reduction="sum") / max(target.numel(), 1)
