"""Models by name: the project's registry, plus `timm:<name>`, `torchvision:<name>` and `hf:<name or path>`."""

from distill.models import amu_head, causal_lm, cifar, draft, small, vlm  # noqa: F401  (registers their models)
from distill.models.build import model_for_data
from distill.models.registry import LIBRARY_PREFIXES, MODELS, create_model

__all__ = ["LIBRARY_PREFIXES", "MODELS", "create_model", "model_for_data"]
