"""Logit standardization for KD (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024);
docs/methods.md, section 2.

`zscore` is the pre-process (it lives in `losses._common` so that `KDLoss` can use it without a circular import);
`ZScoreKDLoss` is vanilla KD on z-scored logits. The CE term stays on the RAW student logits: the framework adds it
(`ce_weight`), not this loss.
"""

from __future__ import annotations

from losses._common import zscore
from losses.kd import KDLoss

__all__ = ["ZScoreKDLoss", "zscore"]


class ZScoreKDLoss(KDLoss):
    """KD on standardized logits: `T^2 * KL(softmax(z(t) / T) || softmax(z(s) / T))`, batchmean.

    `z(l) = (l - mean_C(l)) / (std_C(l) + 1e-7)` per sample with the unbiased std, applied to both student and
    teacher logits. The term is (up to eps) unchanged by any positive affine map `l -> a * l + b` of either logit
    vector. Same as `KDLoss(temperature, standardize=True)`. Published defaults: T = 2 with kd_weight 9 and
    ce_weight 0.1 (T = 3 or 4 and kd_weight 9 or 12 for some teacher/student pairs, docs/methods.md, section 2).

    Args:
        temperature: softening temperature T (> 0) applied after standardization.

    Shapes:
        student_logits: (B, C); teacher_logits: (B, C), C >= 2; target: ignored.
        Returns a scalar, the unweighted term averaged over the batch.
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__(temperature=temperature, standardize=True)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
