"""The AMU head as a recipe names it: `student: {name: amu_head, alpha, uncertainty, power}`. Task amu builds the
head itself (losses.AMULogitBias), initialized from the few-shot features; this entry only declares its settings so
recipes are checked like any other model."""

from __future__ import annotations

from distill.errors import DistillError
from distill.models.registry import MODELS


@MODELS.register("amu_head")
def amu_head(num_classes: int = 10, alpha: float = 0.5, uncertainty: str = "kurtosis", power: float = 0.4) -> None:
    """The AMU logit-bias head (docs/methods.md, section 9), built by task amu from the few-shot features.

    Args:
        num_classes: set from the dataset.
        alpha: weight of the auxiliary logits in the fusion.
        uncertainty: "kurtosis" (scale them by the zero-shot prediction's confidence factor) or "none" (the
            authors' released recipe).
        power: exponent of the confidence factor.
    """
    raise DistillError("student: amu_head is built by task: amu from the few-shot features, not on its own")
