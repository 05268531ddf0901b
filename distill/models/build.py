"""A model of a recipe, sized by its data: the class count and channels, or the vocabulary of its tokenizer."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.data.interface import ClassData, DataSource
from distill.errors import DistillError
from distill.models.causal_lm import enable_gradient_checkpointing
from distill.models.registry import create_model


def model_for_data(spec: dict[str, Any], data: DataSource, what: str) -> nn.Module:
    """The model of `spec` (`{name, <arguments>}`) sized by `data`; `what` names the recipe section in errors, and
    is a teacher's section ('teacher...', 'second_teacher...') or the student."""
    args = {k: v for k, v in spec.items() if k != "name"}
    checkpointing = args.pop("gradient_checkpointing", False)
    role = "teacher" if what.startswith(("teacher", "second_teacher")) else "student"
    if spec["name"].startswith("open_clip:"):  # a zero-shot classifier: prompts from the class names
        if not isinstance(data, ClassData):
            raise DistillError(f"{what}: {spec['name']} classifies images; data.name is not an image dataset")
        args = {"class_names": data.class_names, "image_size": data.image_size, **args}
    try:
        model = create_model(spec["name"], **data.model_args(role), **args)
    except DistillError as exc:
        raise DistillError(f"{what}: {exc}") from None
    if checkpointing:
        enable_gradient_checkpointing(model, what)
    return model
