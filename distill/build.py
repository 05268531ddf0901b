"""Turn checked recipe settings into objects: datamodule, models, loss terms and the task module."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from distill.config.schema import LossSettings, Recipe
from distill.data import ClassificationDataModule, create_datamodule
from distill.errors import DistillError
from distill.losses_registry import LOSSES
from distill.models import create_model
from distill.optim import build_optimizer, build_scheduler
from distill.tasks.classification import DistillationModule


def build_datamodule(spec: dict[str, Any]) -> ClassificationDataModule:
    args = {k: v for k, v in spec.items() if k != "name"}
    return create_datamodule(spec["name"], **args)


def build_model(spec: dict[str, Any], data: ClassificationDataModule, what: str) -> nn.Module:
    args = {k: v for k, v in spec.items() if k != "name"}
    try:
        return create_model(spec["name"], num_classes=data.num_classes, in_chans=data.in_chans, **args)
    except DistillError as exc:
        raise DistillError(f"{what}: {exc}") from None


def build_terms(settings: LossSettings) -> dict[str, tuple[float, nn.Module]]:
    terms = {}
    for name, spec in settings.terms.items():
        args = {k: v for k, v in spec.items() if k not in ("loss", "weight")}
        terms[name] = (spec["weight"], LOSSES.get(spec["loss"])(**args))
    return terms


def build_module(
    recipe: Recipe,
    resolved: dict[str, Any],
    data: ClassificationDataModule,
    teacher: nn.Module | None,
    teacher_source: dict[str, Any] | None,
) -> DistillationModule:
    return DistillationModule(
        student=build_model(recipe.student, data, "student"),
        teacher=teacher,
        num_classes=data.num_classes,
        terms=build_terms(recipe.loss),
        ce_weight=recipe.loss.ce_weight,
        label_smoothing=recipe.loss.label_smoothing,
        optimizer=partial(build_optimizer, recipe.optimizer),
        scheduler=partial(build_scheduler, recipe.scheduler) if recipe.scheduler.name != "constant" else None,
        teacher_source=teacher_source,
        recipe=resolved,
    )
