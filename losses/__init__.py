"""Standalone distillation losses. Each is a plain `torch.nn.Module` that imports torch only, computes in fp32
and never sends gradient to the teacher: lift any of them into your own training code."""

from losses.dkd import DKDLoss
from losses.graph_on_logits import GraphOnLogitsLoss
from losses.kd import KDLoss
from losses.plackett_luce import PlackettLuceLoss
from losses.token_divergence import TokenDivergenceLoss
from losses.zscore import ZScoreKDLoss, zscore

__all__ = [
    "DKDLoss",
    "GraphOnLogitsLoss",
    "KDLoss",
    "PlackettLuceLoss",
    "TokenDivergenceLoss",
    "ZScoreKDLoss",
    "zscore",
]
