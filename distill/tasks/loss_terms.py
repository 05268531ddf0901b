"""Loss terms a recipe can name under `loss.terms`. The loss modules themselves live in the standalone `losses`
package, which does not know about distill; they are registered here."""

from __future__ import annotations

from torch import nn

from distill.registry import Registry
from losses import (
    AlignDistilLoss,
    AMULoss,
    DKDLoss,
    DPOLoss,
    DraftDistillLoss,
    GraphOnLogitsLoss,
    KDLoss,
    PlackettLuceLoss,
    TokenDivergenceLoss,
    ZScoreKDLoss,
)

LOSSES: Registry[type[nn.Module]] = Registry("loss")

LOSSES.register("kd")(KDLoss)
LOSSES.register("zscore_kd")(ZScoreKDLoss)
LOSSES.register("pld")(PlackettLuceLoss)
LOSSES.register("dkd")(DKDLoss)
LOSSES.register("gld")(GraphOnLogitsLoss)
LOSSES.register("token_kl")(TokenDivergenceLoss)
LOSSES.register("align_distil")(AlignDistilLoss)
LOSSES.register("dpo")(DPOLoss)  # the objective of `task: dpo` recipes, not a teacher-student logit term
LOSSES.register("draft_distill")(DraftDistillLoss)  # the objective of `task: draft_distill` recipes (SpecVLM)
LOSSES.register("amu")(AMULoss)  # the objective of `task: amu` recipes (few-shot CLIP)
