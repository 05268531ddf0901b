"""Models by name: the project's registry, plus `timm:<name>` and `torchvision:<name>`."""

from distill.models import cifar, small  # noqa: F401  (registers their models)
from distill.models.registry import LIBRARY_PREFIXES, MODELS, create_model

__all__ = ["LIBRARY_PREFIXES", "MODELS", "create_model"]
