"""Standalone distillation losses. Each is a plain `torch.nn.Module` that imports torch only, computes in fp32
and never sends gradient to the teacher: lift any of them into your own training code. Each declares what it
consumes (`Consumes`, `losses.consumes`)."""

from losses.align_distil import AlignDistilLoss
from losses.amu import AMULogitBias, AMULoss, amu_uncertainty
from losses.consumes import (
    CLASS_LOGITS,
    FEATURES,
    OBJECTIVE,
    SEQUENCE_LOGITS,
    TOKEN_FEATURES,
    TOKEN_LOGITS,
    Consumes,
)
from losses.crd import CRDLoss
from losses.dkd import DKDLoss
from losses.dpo import DPOLoss, implicit_rewards, sequence_logps
from losses.draft_distill import DraftDistillLoss
from losses.feature_maps import AttentionTransferLoss, HintLoss, SimilarityPreservingLoss
from losses.graph_on_logits import GraphOnLogitsLoss
from losses.hidden_state import HiddenStateLoss
from losses.kd import KDLoss
from losses.plackett_luce import PlackettLuceLoss
from losses.projector import FeatureProjector, can_project, projector_for
from losses.relational import PKTLoss, RKDLoss
from losses.review_kd import ReviewKDLoss
from losses.token_divergence import TokenDivergenceLoss
from losses.zscore import ZScoreKDLoss, zscore

__all__ = [
    "CLASS_LOGITS",
    "FEATURES",
    "OBJECTIVE",
    "SEQUENCE_LOGITS",
    "TOKEN_FEATURES",
    "TOKEN_LOGITS",
    "Consumes",
    "AMULogitBias",
    "AMULoss",
    "AlignDistilLoss",
    "AttentionTransferLoss",
    "CRDLoss",
    "DKDLoss",
    "DPOLoss",
    "DraftDistillLoss",
    "FeatureProjector",
    "GraphOnLogitsLoss",
    "HiddenStateLoss",
    "HintLoss",
    "KDLoss",
    "PKTLoss",
    "PlackettLuceLoss",
    "RKDLoss",
    "ReviewKDLoss",
    "SimilarityPreservingLoss",
    "TokenDivergenceLoss",
    "ZScoreKDLoss",
    "amu_uncertainty",
    "can_project",
    "implicit_rewards",
    "projector_for",
    "sequence_logps",
    "zscore",
]
