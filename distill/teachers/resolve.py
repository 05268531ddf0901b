"""Where a frozen model's weights come from, as a plan the engine carries out: weights that are ready (a checkpoint,
a stored teacher, a pretrained hub model), an address to fetch them from once into the store, or a run that must
train them first and where to keep the result.

Nothing here trains, fetches, prints or writes: `plan_frozen` says what must happen, the engine fetches
(`distill.teachers.published.fetch_teacher`) or runs the teacher's recipe and keeps its best student in the store
(`distill.teachers.store.keep`), and `load_frozen` builds the model.

`checkpoint` names the weights (a file, `published`, or a URL); beside `published` or a URL, `recipe` or `train` is
the way out when they cannot be fetched (no published teacher of the model, the address cannot be read): the
teacher is then trained once by that run. The order: the file, the store, the download, the training. A missing
file is an error (a mistyped path must not start a training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from distill.config.load import LoadedRecipe, load_recipe
from distill.data.hub import hub_origin
from distill.data.interface import DataSource
from distill.errors import DistillError
from distill.models import model_for_data
from distill.models.weights import load_weights
from distill.teachers.hints import missing_cifar_teacher, unpublished_cifar_teacher
from distill.teachers.published import PUBLISHED, Remote, remote_of, stored_path
from distill.teachers.store import store_path, teacher_run


@dataclass
class FrozenPlan:
    """How to get the frozen model of one recipe section (`teacher`, `second_teacher`).

    `weights` is a file, or None for a model whose weights come with it (`hf:` and `open_clip:` models, timm with
    `pretrained: true`). `run` is the ordinary run that trains the model when the file does not exist yet; `remote`
    the address it is fetched from into the store, and `fallback` the plan that trains it when that address cannot
    be read.
    """

    role: str
    model: dict[str, Any]
    weights: Path | None
    run: LoadedRecipe | None = None
    dtype: str | None = None  # the precision the model is held in (`teacher.dtype`); None: as loaded
    remote: Remote | None = None
    fallback: FrozenPlan | None = None
    why: str | None = None  # a plan that stands in for the recipe's checkpoint: why

    @property
    def needs_training(self) -> bool:
        return self.weights is not None and not self.weights.is_file() and self.run is not None

    @property
    def needs_fetching(self) -> bool:
        return self.remote is not None and not self.weights.is_file()

    @property
    def source(self) -> dict[str, Any]:
        """What the model is and where its weights are: recorded in the student's checkpoints. A Hugging Face model
        read from the Hub adds the commit its name resolved to (`hub`)."""
        source = {"model": dict(self.model), "weights": str(self.weights) if self.weights else self.model["name"]}
        if self.weights is None and self.model["name"].startswith("hf:"):
            source["hub"] = hub_origin(self.model["name"].removeprefix("hf:"), self.model.get("revision"))
        if self.remote is not None:
            source["address"] = self.remote.address
        return source


def plan_frozen(loaded: LoadedRecipe, role: str, teacher_task: str) -> FrozenPlan | None:
    """The plan for the recipe's section `role` (None when the recipe has none). A model trained from `train`
    settings learns with `teacher_task`."""
    section = getattr(loaded.recipe, role)
    if section is None:
        return None
    model, dtype = dict(section.model), section.dtype
    if dtype == "int8":
        check_int8(role, model, loaded.recipe.trainer.get("accelerator"))
    trained = trained_plan(loaded, role, teacher_task, model, dtype)
    if section.checkpoint is not None:
        return checkpoint_plan(loaded, role, model, dtype, trained)
    if trained is not None:
        return trained
    return FrozenPlan(role, model, None, dtype=dtype)  # pretrained: the weights come with the model


def trained_plan(
    loaded: LoadedRecipe, role: str, teacher_task: str, model: dict[str, Any], dtype: str | None
) -> FrozenPlan | None:
    """The plan that trains the model of section `role` by its `recipe` or `train` settings (None without)."""
    section = getattr(loaded.recipe, role)
    if section.recipe is not None:
        run = load_recipe(section.recipe, section.overrides)
        return FrozenPlan(role, model, store_path(section.store, run.name, run.resolved), run, dtype)
    if section.train is not None:
        run = teacher_run(loaded, role, teacher_task)
        return FrozenPlan(role, model, store_path(section.store, model["name"], run.resolved), run, dtype)
    return None


def checkpoint_plan(
    loaded: LoadedRecipe, role: str, model: dict[str, Any], dtype: str | None, trained: FrozenPlan | None
) -> FrozenPlan:
    """The plan of a section with a `checkpoint`: a file, or the published teacher of its model or a URL, fetched
    into the store; `trained` (its `recipe` or `train`) where those cannot be had."""
    section = getattr(loaded.recipe, role)
    checkpoint, name = section.checkpoint, model["name"]
    remote = remote_of(checkpoint, section.checkpoint_sha256, name)
    if remote is not None:
        weights = stored_path(section.store, name, remote)
        return FrozenPlan(role, model, weights, dtype=dtype, remote=remote, fallback=trained)
    if checkpoint == PUBLISHED:  # a model with no published teacher
        if trained is None:
            raise DistillError(unpublished_cifar_teacher(role, name))
        return replace(trained, why=f"{role}.checkpoint: no published {name}")
    # a file named by the recipe is never replaced by training: a mistyped path is an error, not a 240-epoch run
    weights = Path(checkpoint).expanduser().resolve()
    if not weights.is_file() and (loaded.recipe.data or {}).get("name") == "cifar100":  # say where one can be had
        raise DistillError(missing_cifar_teacher(role, checkpoint, name))
    return FrozenPlan(role, model, weights, dtype=dtype)  # loading it says the file is missing


def check_int8(role: str, model: dict[str, Any], accelerator: Any) -> None:
    """8-bit weights run only where bitsandbytes' int8 matrix multiplication does: a Hugging Face model on a CUDA
    GPU. Anything else is refused before any work starts."""
    if not str(model.get("name", "")).startswith("hf:"):
        raise DistillError(f"{role}.dtype: int8 loads Hugging Face models (hf:<name>) only; use bfloat16")
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise DistillError(
            f"{role}.dtype: int8 needs a CUDA GPU (bitsandbytes' 8-bit kernels) and this run has none; use bfloat16"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise DistillError(f"{role}.dtype: int8 needs the bitsandbytes library: pip install 'distill[bnb]'") from None


def load_frozen(plan: FrozenPlan, data: DataSource) -> Any:
    """The model of `plan`, sized by `data`, with its weights loaded (they must exist: the engine trains first),
    in the plan's precision."""
    spec = dict(plan.model)
    if plan.dtype == "int8":
        spec.update(int8_arguments())
    elif plan.dtype in FLOAT_DTYPES and spec["name"].startswith("hf:"):
        spec["dtype"] = plan.dtype  # loaded in it, never held in another precision first
    model = model_for_data(spec, data, f"{plan.role}.model")
    if plan.weights is not None:
        load_weights(model, plan.weights, f"{plan.role}.checkpoint")
    if plan.dtype in FLOAT_DTYPES:
        model.to(getattr(torch, plan.dtype))
    return model


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def int8_arguments() -> dict[str, Any]:
    """`from_pretrained` arguments that load a model's linear layers in 8 bits, on this process's GPU."""
    from transformers import BitsAndBytesConfig

    quantized = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": quantized, "device_map": {"": torch.cuda.current_device()}}


def reference_weights(loaded: LoadedRecipe, teacher_task: Callable[[str], str]) -> Path:
    """The weights of `init: reference`: the stored teacher of the recipe that trains this recipe's teacher (for
    AlignDistil, the SFT model the DPO model started from). `teacher_task(task)` names the task a teacher trained for
    `task` learns with."""
    teacher = loaded.recipe.teacher
    if teacher is None or teacher.recipe is None:
        raise DistillError("init: 'reference' needs teacher.recipe (a recipe whose own teacher is the reference)")
    run = load_recipe(teacher.recipe, teacher.overrides)
    plan = plan_frozen(run, "teacher", teacher_task(run.recipe.task))
    if plan is None or plan.run is None:
        raise DistillError(f"init: 'reference': recipe {teacher.recipe} has no teacher trained by the store")
    if not plan.weights.is_file():
        raise DistillError(f"init: 'reference': the reference model is not stored yet ({plan.weights})")
    return plan.weights
