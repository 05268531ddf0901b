"""Turn checked recipe settings into objects: datamodule, models, loss terms and the task module."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from distill.config.schema import LossSettings, Recipe
from distill.data import ClassificationDataModule, create_datamodule
from distill.engine.optim import build_optimizer, build_scheduler
from distill.errors import DistillError
from distill.models import create_model
from distill.models.weights import load_weights
from distill.tasks.base import DistillationTask
from distill.tasks.classification import DistillationModule
from distill.tasks.loss_terms import LOSSES


def build_datamodule(spec: dict[str, Any]) -> ClassificationDataModule:
    args = {k: v for k, v in spec.items() if k != "name"}
    return create_datamodule(spec["name"], **args)


def build_model(spec: dict[str, Any], data: Any, what: str) -> nn.Module:
    """The model of `spec`, sized by the data (classes and channels, or the teacher's or student's vocabulary)."""
    args = {k: v for k, v in spec.items() if k != "name"}
    role = "teacher" if what.startswith(("teacher", "second_teacher")) else "student"
    if spec["name"].startswith("open_clip:"):  # a zero-shot classifier: prompts from the class names
        args = {"class_names": getattr(data, "class_names", None), "image_size": data.image_size, **args}
    try:
        return create_model(spec["name"], **data.model_args(role), **args)
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
    data: Any,
    teacher: nn.Module | None,
    teacher_source: dict[str, Any] | None,
    second_teacher: nn.Module | None = None,
    init: str | Path | None = None,
) -> DistillationTask:
    """The task module of `recipe.task`, wired from the recipe (style item 1: everything injected).

    `init` is where the student's first weights come from (default: the recipe's `init`).
    """
    if recipe.task == "draft_distill":
        return build_draft_module(recipe, resolved, data, teacher, teacher_source)
    if recipe.task == "amu":
        from distill.tasks.amu_build import build_amu_module

        objective = only_term(recipe, "amu")
        return build_amu_module(
            recipe, resolved, data, teacher, teacher_source, second_teacher, objective, scheduler_factory(recipe)
        )
    student = build_model(recipe.student, data, "student")
    initialize(student, str(init) if init is not None else recipe.init, teacher)
    schedule = scheduler_factory(recipe)
    if recipe.task == "align_distil":
        from distill.tasks.align_distil import AlignDistilModule

        settings = recipe.align_distil
        return AlignDistilModule(
            student,
            teacher,
            second_teacher,
            only_term(recipe, "align_distil"),
            mode=settings.mode,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens,
            eos_id=data.tokenizer.eos_id,
            pad_id=data.pad_id,
            optimizer=partial(build_optimizer, recipe.optimizer),
            scheduler=schedule,
            teacher_source=teacher_source,
            recipe=resolved,
            reference=reference_model(student, init if init is not None else recipe.init),
        )
    if recipe.task == "dpo":
        from distill.tasks.dpo import DPOModule

        return DPOModule(
            student,
            teacher,
            only_term(recipe, "dpo"),
            optimizer=partial(build_optimizer, recipe.optimizer),
            scheduler=schedule,
            teacher_source=teacher_source,
            recipe=resolved,
        )
    common = dict(
        student=student,
        teacher=teacher,
        terms=build_terms(recipe.loss),
        ce_weight=recipe.loss.ce_weight,
        optimizer=partial(build_optimizer, recipe.optimizer),
        scheduler=schedule,
        teacher_source=teacher_source,
        recipe=resolved,
    )
    if recipe.task == "causal_lm":
        from distill.tasks.causal_lm import CausalLMDistillationModule

        return CausalLMDistillationModule(**common)
    from distill.teachers.cache_setup import open_teacher_cache

    cache = open_teacher_cache(recipe, data, teacher_source) if teacher is not None else None
    return DistillationModule(
        **common, num_classes=data.num_classes, label_smoothing=recipe.loss.label_smoothing, teacher_cache=cache
    )


# The validation metric that picks the best checkpoint, and whether higher is better, per task.
MONITOR = {
    "classification": ("val/acc", "max"),
    "causal_lm": ("val/loss", "min"),
    "dpo": ("val/loss", "min"),
    "align_distil": ("val/student_pref_acc", "max"),
    "draft_distill": ("val/agreement", "max"),
    "amu": ("val/acc", "max"),
}


def reference_model(student: nn.Module, init: str | Path | None) -> nn.Module | None:
    """AlignDistil's reference model, for its reward metrics: a copy of the student as it starts, when it starts from
    weights read from a file (`init: reference`, resolved to its path, or a path); else None."""
    if init is None or str(init) in ("teacher", "reference"):  # 'reference' unresolved: no run to take it from
        return None
    return copy.deepcopy(student)


def scheduler_factory(recipe: Recipe) -> Any:
    return partial(build_scheduler, recipe.scheduler) if recipe.scheduler.name != "constant" else None


def build_draft_module(
    recipe: Recipe, resolved: dict[str, Any], data: Any, teacher: nn.Module | None, source: dict[str, Any] | None
) -> DistillationTask:
    """A draft for the target (the teacher): sized from it; its embeddings and head stay the target's."""
    from distill.tasks.draft_distill import DraftDistillModule

    if teacher is None:
        raise DistillError("teacher: draft_distill needs the target model as its teacher")
    args = {k: v for k, v in recipe.student.items() if k != "name"}
    try:
        draft = create_model(recipe.student["name"], target=teacher, **args)
    except DistillError as exc:
        raise DistillError(f"student: {exc}") from None
    eos_id = getattr(getattr(data, "tokenizer", None), "eos_id", None)
    return DraftDistillModule(
        draft,
        teacher,
        only_term(recipe, "draft_distill"),
        **vars(recipe.speculative),
        eos_id=eos_id,
        optimizer=partial(build_optimizer, recipe.optimizer),
        scheduler=scheduler_factory(recipe),
        teacher_source=source,
        recipe=resolved,
    )


def only_term(recipe: Recipe, name: str) -> nn.Module:
    """The objective of a one-term task (dpo, align_distil, draft_distill, amu): the recipe check says so."""
    (spec,) = recipe.loss.terms.values()
    return LOSSES.get(spec["loss"])(**{k: v for k, v in spec.items() if k not in ("loss", "weight")})


def initialize(student: nn.Module, init: str | None, teacher: nn.Module | None) -> None:
    """The student's first weights: fresh (None), a copy of the teacher's ('teacher'), or read from a file."""
    if init is None:
        return
    if init == "teacher":
        if teacher is None:
            raise DistillError("init: 'teacher' needs a teacher section")
        try:
            student.load_state_dict(teacher.state_dict())
        except RuntimeError as exc:
            raise DistillError(f"init: the student cannot start from the teacher: {str(exc).splitlines()[0]}") from None
        student.requires_grad_(True)
        return
    load_weights(student, init, "init")
