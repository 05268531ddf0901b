"""The one wiring of a run, shared by fit, validate and test: the datamodule, then the task built by its spec from
a build context (recipe, data, frozen models, optimizer and scheduler factories)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from distill.config.load import LoadedRecipe
from distill.config.schema import Recipe
from distill.data import create_datamodule
from distill.data.interface import ClassData, DataSource
from distill.engine.compile import compile_in_place, uses_cuda_graphs
from distill.engine.optim import build_optimizer, build_scheduler
from distill.tasks import BuildContext, FrozenModel, TaskSpec, task_spec
from distill.tasks.base import DistillationTask
from distill.teachers.cache_setup import open_response_store, open_teacher_cache
from distill.teachers.token_cache import TokenTeacherCache


def create_data(spec: dict[str, Any]) -> DataSource:
    """The datamodule of a recipe's `data` section."""
    return create_datamodule(spec["name"], **{k: v for k, v in spec.items() if k != "name"})


def prepare_data(loaded: LoadedRecipe) -> DataSource:
    """The recipe's datamodule, set up: missing or broken data surfaces here, before anything is written."""
    data = create_data(loaded.recipe.data)
    data.seed = loaded.recipe.seed
    if fast_path(loaded.recipe) and getattr(data, "can_hold_on_device", False):
        data.on_device = True  # the whole training set on the accelerator, augmented in batches there
        data.num_workers = 0  # batches are lists of indices: nothing for worker processes to load
    if channels_last(loaded.recipe) and isinstance(data, ClassData):
        data.channels_last = True  # on-device batches in the layout the models will have
    data.prepare_data()
    data.setup("fit")
    return data


def build_task(
    loaded: LoadedRecipe,
    data: DataSource,
    frozen: dict[str, FrozenModel],
    init: str | Path | None,
    training: bool,
) -> DistillationTask:
    """The recipe's task module, built by its spec from the shared context, with the recipe's speed settings.

    `frozen` holds the frozen models with their weights; `init` the student's first weights (resolved: a file,
    'teacher' or None). With `training` False the task is built to evaluate a checkpoint.
    """
    recipe = loaded.recipe
    spec = spec_of(loaded)
    teacher = frozen.get("teacher")
    outputs = None
    if training and spec.reads_teacher_cache and teacher is not None:
        outputs = open_teacher_cache(recipe, data, teacher.source, teacher.model)
        if isinstance(outputs, TokenTeacherCache) and outputs.created:
            announce_token_cache(outputs)
    responses = None
    if training and teacher is not None and getattr(loaded.settings, "responses", None) is not None:
        responses = open_response_store(recipe, data, teacher.source, loaded.settings)
    context = BuildContext(
        recipe=recipe,
        resolved=loaded.resolved,
        data=data,
        settings=loaded.settings,
        frozen=frozen,
        optimizer=partial(build_optimizer, recipe.optimizer),
        scheduler=partial(build_scheduler, recipe.scheduler) if recipe.scheduler.name != "constant" else None,
        init=str(init) if init is not None else None,
        teacher_outputs=outputs,
        teacher_responses=responses,
        training=training,
    )
    L.seed_everything(recipe.seed, workers=True, verbose=False)  # the student's init does not depend on the rest
    module = spec.build(context)
    apply_speed_settings(module, recipe)
    return module


@rank_zero_only
def announce_token_cache(cache: TokenTeacherCache) -> None:
    """What a new language-model cache will take, printed before anything is written."""
    kept = "all, exact" if cache.k == cache.vocab_size else f"top {cache.k:,}"
    rows = " + ".join(f"{count:,} {split}" for split, count in cache.rows.items())
    print(
        f"teacher.cache: storing the teacher's next-token distribution ({kept} of {cache.vocab_size:,} entries): "
        f"{cache.bytes_per_token:,} bytes per token; {rows} rows x {cache.positions:,} positions = "
        f"{cache.total_bytes() / 2**20:,.1f} MiB in {cache.folder}"
    )


def spec_of(loaded: LoadedRecipe) -> TaskSpec:
    return task_spec(loaded.recipe.task)


def fast_path(recipe: Recipe) -> bool:
    """Whether `speed.fast_path` is on for this run: `on`, or `auto` and the run trains on a CUDA GPU."""
    setting = recipe.speed.fast_path
    if setting != "auto":
        return setting == "on"
    accelerator = str(recipe.trainer.get("accelerator", "auto")).lower()
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def channels_last(recipe: Recipe) -> bool:
    return recipe.speed.channels_last or fast_path(recipe)


def apply_speed_settings(module: L.LightningModule, recipe: Recipe) -> None:
    """channels_last and torch.compile as the recipe's `speed` section asks (in place: state-dict keys unchanged)."""
    speed = recipe.speed
    models = {name: getattr(module, name, None) for name in ("student", "teacher")}
    if channels_last(recipe):
        for model in models.values():
            if model is not None:
                model.to(memory_format=torch.channels_last)
    for name, wanted in (("student", speed.compile_student), ("teacher", speed.compile_teacher)):
        if wanted and models[name] is not None:
            compile_in_place(models[name], speed.compile_mode, training_only=name == "student")
    # CUDA graphs: each training step starts a new generation of the graphs' output memory
    module.marks_graph_steps = uses_cuda_graphs(speed.compile_mode) and (speed.compile_student or speed.compile_teacher)
