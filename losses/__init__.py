"""Standalone distillation losses. Each is a plain `torch.nn.Module` that imports torch only, computes in fp32
and never sends gradient to the teacher: lift any of them into your own training code. Each declares what it
consumes (`Consumes`, `losses.consumes`)."""

from losses.align_distil import AlignDistilLoss
from losses.amu import AMULogitBias, AMULoss, amu_uncertainty
from losses.consumes import CLASS_LOGITS, OBJECTIVE, SEQUENCE_LOGITS, TOKEN_LOGITS, Consumes
from losses.dkd import DKDLoss
from losses.dpo import DPOLoss, implicit_rewards, sequence_logps
from losses.draft_distill import DraftDistillLoss
from losses.graph_on_logits import GraphOnLogitsLoss
from losses.kd import KDLoss
from losses.plackett_luce import PlackettLuceLoss
from losses.token_divergence import TokenDivergenceLoss
from losses.zscore import ZScoreKDLoss, zscore

__all__ = [
    "CLASS_LOGITS",
    "OBJECTIVE",
    "SEQUENCE_LOGITS",
    "TOKEN_LOGITS",
    "Consumes",
    "AMULogitBias",
    "AMULoss",
    "AlignDistilLoss",
    "DKDLoss",
    "DPOLoss",
    "DraftDistillLoss",
    "GraphOnLogitsLoss",
    "KDLoss",
    "PlackettLuceLoss",
    "TokenDivergenceLoss",
    "ZScoreKDLoss",
    "amu_uncertainty",
    "implicit_rewards",
    "sequence_logps",
    "zscore",
]
