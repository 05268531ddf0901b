"""Runs: `fit` (train, keep checkpoints, test the best) and `evaluate` (validate or test a checkpoint), built by the
one wiring (`distill.engine.wiring`), so evaluation builds exactly what training built.

These are what the CLI calls; notebooks and scripts can call them too.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from distill.config.load import LoadedRecipe, save_recipe
from distill.data.download import Unreachable
from distill.data.interface import DataReport, DataSource
from distill.engine.quiet import held_back_warnings, quiet_expected_messages, release, show_warnings
from distill.engine.run_folder import RunCheckpoint, RunFolder
from distill.engine.runs import RUN_DIR_ENV, external_launch, run_folder
from distill.engine.trainer import evaluation_trainer, make_trainer
from distill.engine.wiring import build_task, prepare_data, spec_of
from distill.errors import DistillError
from distill.models import model_for_data
from distill.models.lora import LoRASettings, check_targets
from distill.tasks import FrozenModel, task_spec
from distill.tasks.base import DistillationTask
from distill.teachers.cache_setup import complete_token_cache
from distill.teachers.published import fetch_teacher
from distill.teachers.resolve import FrozenPlan, load_frozen, plan_frozen, reference_weights
from distill.teachers.store import claim, keep


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, float]  # on the test split, with the best checkpoint
    resolved: dict[str, Any]


def fit(loaded: LoadedRecipe, resume_from: Path | None = None, callbacks: list[Callback] = ()) -> FitResult:
    """Train the student of `loaded` (training its frozen models first where needed) in a new run folder, or
    continue the run whose checkpoint `resume_from` is (`engine.runs.last_checkpoint` chooses it)."""
    quiet_expected_messages()
    recipe = loaded.recipe
    resume = RunFolder.of(resume_from).path if resume_from is not None else None
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    data = prepare_checked_data(loaded)
    run_dir, fresh, inherited = run_folder(recipe.run.root, recipe.run.name or loaded.name, resume)
    try:
        # built first: constructing it checks the trainer settings before any teacher is trained
        trainer = make_trainer(
            recipe.trainer,
            run_dir,
            spec_of(loaded).monitor_metric,
            callbacks=list(callbacks),
            fsdp=recipe.fsdp,
            logger=recipe.logger,
        )
        module = assemble(loaded, data, training=True)
    except DistillError:
        if fresh:
            shutil.rmtree(run_dir)  # made for this run a moment ago: bad input leaves nothing behind
        raise
    run = RunFolder(run_dir)
    if fresh:
        save_recipe(loaded.resolved, run.recipe_file)
        run.sources_file.write_text(json.dumps(module.sources, indent=2))  # what the checkpoints record, readable
        if isinstance(data, DataReport) and trainer.is_global_zero:  # rows dropped and cut: recorded with the run
            run.data_file.write_text(json.dumps(data.statistics, indent=2))
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the processes of the other ranks, if the strategy starts them, use it
    release(trainer.device_info)
    try:
        trainer.fit(module, datamodule=module.training_data(data), ckpt_path=resume_from, weights_only=True)
        best = Path(trainer.checkpoint_callback.best_model_path or run.last)
        (metrics,) = trainer.test(module, datamodule=data, ckpt_path=str(best), weights_only=True, verbose=False)
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
    metrics = {k: float(v) for k, v in metrics.items()}
    if trainer.is_global_zero:
        run.results_file.write_text(json.dumps({"best_checkpoint": str(best), "test": metrics}, indent=2))
    leave_process_group()
    return FitResult(run_dir=run_dir, best_checkpoint=best, metrics=metrics, resolved=loaded.resolved)


def prepare_checked_data(loaded: LoadedRecipe) -> DataSource:
    """The recipe's data, set up, and what only the data and the student's structure can tell checked, before
    anything is written or trained. The setup's warnings (rows cut or dropped) are shown once the checks pass, so
    that a refused run answers in one line."""
    with held_back_warnings() as held:
        data = prepare_data(loaded)
        check_student_lora(loaded, data)
        spec = spec_of(loaded)
        if spec.check_data is not None:  # what only the rows tell (e.g. packed conversations)
            spec.check_data(data, loaded.settings)
    show_warnings(held)
    return data


def assemble(loaded: LoadedRecipe, data: DataSource, training: bool) -> DistillationTask:
    """The task of `loaded` on `data`: its frozen models (trained first when their weights are not stored yet) and
    the student's first weights, built by the task's spec. `data` comes from `prepare_checked_data`."""
    frozen = provide_frozen(loaded, data, training)  # first: training them may store the reference `init` names
    init = reference_weights(loaded, teacher_task) if loaded.recipe.init == "reference" else loaded.recipe.init
    return build_task(loaded, data, frozen, init, training)


def check_student_lora(loaded: LoadedRecipe, data: DataSource) -> None:
    """The student's LoRA targets, checked on its structure alone (built on the meta device: no memory, no weights).
    A Hugging Face student is checked when it is loaded."""
    spec = dict(loaded.recipe.student or {})
    lora = spec.pop("lora", None)
    if lora is None or str(spec.get("name", "")).startswith("hf:"):
        return
    with torch.device("meta"):
        structure = model_for_data(spec, data, "student")
    check_targets(structure, LoRASettings(**lora))


def provide_frozen(loaded: LoadedRecipe, data: DataSource, training: bool = True) -> dict[str, FrozenModel]:
    """Each frozen model the task reads, with its weights; a teacher whose weights are not stored yet is fetched
    from its address, or trained first by its own run (an ordinary `fit`), and kept in the store. A language-model
    teacher whose every output the run reads is already in `teacher.cache` is not loaded at all (its model is
    None)."""
    frozen = {}
    for role in spec_of(loaded).frozen:
        plan = plan_frozen(loaded, role, teacher_task(loaded.recipe.task))
        if plan is None:
            continue
        if plan.needs_fetching:
            plan = fetch_frozen(plan, data)
        if plan.needs_training:
            train_frozen(plan)
        if role == "teacher" and training and teacher_fully_cached(loaded, data, plan):
            frozen[role] = FrozenModel(None, plan.source)
            continue
        frozen[role] = FrozenModel(load_frozen(plan, data), plan.source)
    return frozen


def teacher_fully_cached(loaded: LoadedRecipe, data: DataSource, plan: FrozenPlan) -> bool:
    """Whether training reads nothing from the teacher but its cache: a task that reads `teacher.cache`, a cache
    holding every row of the data, and no other use of the teacher's weights (`init: teacher`)."""
    if not spec_of(loaded).reads_teacher_cache or loaded.recipe.init == "teacher":
        return False
    cache = complete_token_cache(loaded.recipe, data, plan.source)
    if cache is not None:
        announce(f"teacher.cache: every row is stored in {cache.folder}; the teacher is not loaded")
    return cache is not None


@rank_zero_only
def announce(line: str) -> None:
    print(line)


def teacher_task(task: str) -> str:
    """The task a teacher trained for `task` (from `teacher.train`) learns with."""
    spec = task_spec(task)
    return spec.teacher_task or spec.name


def fetch_frozen(plan: FrozenPlan, data: DataSource) -> FrozenPlan:
    """The plan once its weights are fetched into the store; its fallback (training by `recipe` or `train`) when
    their address cannot be read (offline, no network)."""
    try:
        fetch_teacher(plan.role, plan.model, plan.remote, plan.weights, data)
    except Unreachable as exc:
        if plan.fallback is None:
            raise
        return dataclasses.replace(plan.fallback, why=str(exc))
    return plan


def train_frozen(plan: FrozenPlan) -> None:
    """Run the plan's teacher run and keep its best student as the frozen model's weights; a second process that
    needs the same teacher meanwhile waits for it, then reads it from the store."""
    if external_launch() is not None:  # every process of the job would train it at once
        raise DistillError(
            f"{plan.role}: not trained yet ({plan.weights} is missing) and processes started by torchrun or SLURM do "
            f"not train one: run `distill fit` once in a single process first, or give {plan.role}.checkpoint"
        )
    with claim(plan.weights, f"training the {plan.role}"):
        if plan.weights.is_file():  # trained by another process while this one waited
            return
        if plan.why is not None:
            warnings.warn(f"{plan.why}; training the {plan.role} instead", stacklevel=1)
        print(f"No stored {plan.role} for these settings: training it first ({plan.weights.parent})")
        result = fit(plan.run.replaced(run={"root": str(plan.weights.parent), "name": "train"}))
        keep(result.best_checkpoint, plan.weights, {"recipe": result.resolved, "metrics": result.metrics})


def leave_process_group() -> None:
    """At the end of a distributed run the ranks leave together: one that exits while another still holds a gloo
    connection to it can make that one abort."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@dataclass
class Restored:
    """A finished run's task, rebuilt by the one wiring with the checkpoint's weights loaded, and its data."""

    module: DistillationTask
    data: DataSource
    loaded: LoadedRecipe
    checkpoint: RunCheckpoint
    initial_student: torch.nn.Module | None = None  # the student before training (`keep_initial`)


def restore(
    checkpoint: RunCheckpoint, loaded: LoadedRecipe | None = None, training: bool = False, keep_initial: bool = False
) -> Restored:
    """The task of `checkpoint` (with `loaded`, default the checkpoint's own recipe, pinned to the frozen weights it
    learned from), its trained state loaded. With `keep_initial` a copy of the student as it started (the run's
    seed) is kept too, for comparisons before and after training."""
    loaded = loaded or checkpoint.loaded()
    L.seed_everything(loaded.recipe.seed, workers=True, verbose=False)
    data = prepare_checked_data(loaded)
    module = assemble(loaded, data, training)
    initial = copy.deepcopy(module.student).eval() if keep_initial else None
    try:
        module.load_trained_state(checkpoint.state)
    except (ValueError, RuntimeError) as exc:  # other keys, or other shapes
        reason = str(exc).strip().splitlines()[-1].strip()
        raise DistillError(f"{checkpoint.path} does not fit the recipe's student: {reason}") from None
    return Restored(module, data, loaded, checkpoint, initial)


def evaluate(
    checkpoint: RunCheckpoint, stage: Literal["validate", "test"], loaded: LoadedRecipe | None = None
) -> dict[str, float]:
    """Validate or test the student in `checkpoint`, built as it was trained (`loaded` defaults to the recipe it
    was trained with), with the frozen models it learned from."""
    quiet_expected_messages()
    restored = restore(checkpoint, loaded)
    recipe = restored.loaded.recipe
    trainer = evaluation_trainer(recipe.trainer, recipe.fsdp)
    run = trainer.validate if stage == "validate" else trainer.test
    (metrics,) = run(restored.module, datamodule=restored.data, verbose=False)
    leave_process_group()
    return {k: float(v) for k, v in metrics.items()}
