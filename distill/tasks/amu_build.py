"""Wiring of `task: amu`: the few-shot features computed once by the frozen models, the head initialized from them."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from distill.config.schema import Recipe
from distill.data.feature_cache import compute_features
from distill.engine.optim import build_optimizer
from distill.errors import DistillError
from distill.models.features import feature_extractor
from distill.tasks.base import DistillationTask
from losses import AMULogitBias


def build_amu_module(
    recipe: Recipe,
    resolved: dict[str, Any],
    data: Any,
    clip: nn.Module | None,
    source: dict[str, Any] | None,
    aux: nn.Module | None,
    objective: nn.Module,
    scheduler: Any,
) -> DistillationTask:
    from distill.tasks.amu import AMUModule

    if clip is None or aux is None:
        raise DistillError(
            "teacher and second_teacher: task amu needs the zero-shot CLIP model and the auxiliary model"
        )
    clip.eval()
    aux.eval()
    device = feature_device(recipe.trainer)
    extractors = {"clip": clip.to(device), "aux": feature_extractor(aux.to(device), "second_teacher")}
    train = data.train_set
    features = compute_features(
        train, unaugmented(train, data.val_set), extractors, recipe.amu.views, device=device, seed=recipe.seed
    )
    clip.cpu()
    aux.cpu()
    head_args = {k: v for k, v in recipe.student.items() if k != "name"}
    head = AMULogitBias(features.outputs["aux"][0], features.labels, data.num_classes, **head_args)
    return AMUModule(
        head,
        clip,
        aux,
        objective,
        features=features,
        batch_size=data.batch_size,
        seed=recipe.seed,
        optimizer=partial(build_optimizer, recipe.optimizer),
        scheduler=scheduler,
        teacher_source=source,
        recipe=resolved,
    )


def unaugmented(train: Dataset, val: Dataset) -> Dataset:
    """The training samples with the evaluation transform (a shallow copy: the images are shared), or `train` as it
    is when the sets keep no `transform` to swap."""
    base = train.dataset if isinstance(train, Subset) else train
    if not hasattr(base, "transform") or not hasattr(val, "transform"):
        return train
    plain = copy.copy(base)
    plain.transform = val.transform
    if isinstance(train, Subset):
        subset = Subset(plain, train.indices)
        subset.labels = getattr(train, "labels", None)  # type: ignore[attr-defined]
        return subset
    return plain


def feature_device(trainer: dict[str, Any]) -> torch.device:
    """Where the features are computed: the GPU when the recipe trains on one (or on 'auto' with one present)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
