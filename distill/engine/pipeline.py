"""Runs: `fit` (train, keep checkpoints, report on the test split) and `evaluate` (validate/test a checkpoint).

These are what the CLI calls; notebooks and scripts can call them too.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from distill.config.load import LoadedRecipe, from_dict, save_recipe
from distill.config.schema import SpeedSettings
from distill.engine.quiet import quiet_expected_messages, release
from distill.engine.runs import (
    RECIPE_FILE,
    RUN_DIR_ENV,
    build_trainer,
    last_checkpoint,
    make_trainer,
    run_folder,
    with_strategy,
)
from distill.engine.wiring import MONITOR, build_datamodule, build_module
from distill.errors import DistillError
from distill.models.weights import read_checkpoint
from distill.teachers.resolve import reference_path, resolve_teacher

RESULTS_FILE = "results.json"


@dataclass
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, float]  # on the test split, with the best checkpoint
    resolved: dict[str, Any]


def prepare_data(loaded: LoadedRecipe) -> L.LightningDataModule:
    data = build_datamodule(loaded.recipe.data)
    data.seed = loaded.recipe.seed
    if loaded.recipe.speed.channels_last and hasattr(data, "channels_last"):
        data.channels_last = True  # on-device batches in the layout the models will have
    data.prepare_data()
    data.setup("fit")  # surfaces missing or broken data before anything is written
    return data


def fit(loaded: LoadedRecipe, resume: Path | None = None, callbacks: list[Callback] = ()) -> FitResult:
    """Train the student of `loaded` (training its teacher first if needed) in a new run folder, or resume one."""
    quiet_expected_messages()
    recipe = loaded.recipe
    checkpoint = last_checkpoint(resume) if resume is not None else None
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    data = prepare_data(loaded)
    run_dir, fresh, inherited = run_folder(recipe.run.root, recipe.run.name or loaded.name, resume)
    try:
        # built first: constructing it checks the trainer settings before any teacher is trained
        trainer = make_trainer(
            recipe.trainer, run_dir, MONITOR[recipe.task], callbacks=list(callbacks), fsdp=recipe.fsdp
        )
        teacher, teacher_source = resolve_teacher(loaded, data)
        second_teacher, _ = resolve_teacher(loaded, data, "second_teacher")
        init = reference_path(loaded) if recipe.init == "reference" else recipe.init
        L.seed_everything(recipe.seed, workers=True, verbose=False)  # the student's init does not depend on the teacher
        module = build_module(recipe, loaded.resolved, data, teacher, teacher_source, second_teacher, init)
        apply_speed_settings(module, recipe.speed)
    except DistillError:
        if fresh:
            shutil.rmtree(run_dir)  # made for this run a moment ago: bad input leaves nothing behind
        raise
    if fresh:
        save_recipe(loaded.resolved, run_dir / RECIPE_FILE)
    if hasattr(module, "training_data"):  # a task that trains on data of its own (amu: cached features)
        data = module.training_data(data)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the processes of the other ranks, if the strategy starts them, use it
    release(trainer.device_info)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=True)
        best = Path(trainer.checkpoint_callback.best_model_path or run_dir / "checkpoints" / "last.ckpt")
        (metrics,) = trainer.test(module, datamodule=data, ckpt_path=str(best), weights_only=True, verbose=False)
    finally:
        if inherited is None:
            os.environ.pop(RUN_DIR_ENV, None)
    metrics = {k: float(v) for k, v in metrics.items()}
    if trainer.is_global_zero:
        (run_dir / RESULTS_FILE).write_text(json.dumps({"best_checkpoint": str(best), "test": metrics}, indent=2))
    leave_process_group()
    return FitResult(run_dir=run_dir, best_checkpoint=best, metrics=metrics, resolved=loaded.resolved)


def leave_process_group() -> None:
    """At the end of a distributed run the ranks leave together: one that exits while another still holds a gloo
    connection to it can make that one abort."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def recipe_of_checkpoint(path: Path) -> dict[str, Any]:
    meta = read_checkpoint(path).get("distill")
    if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict):
        raise DistillError(f"--checkpoint: {path} was not written by distill fit; pass --recipe to say how to build it")
    return meta["recipe"]


def evaluate(loaded: LoadedRecipe, checkpoint: Path, stage: Literal["validate", "test"]) -> dict[str, float]:
    """Validate or test the student in `checkpoint` with the data and teacher of `loaded` (no training)."""
    quiet_expected_messages()
    recipe = loaded.recipe
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    data = prepare_data(loaded)
    meta = read_checkpoint(checkpoint, "--checkpoint").get("distill") or {}
    teacher, source = None, meta.get("teacher")
    if loaded.resolved["teacher"] and source and str(source["weights"]).startswith("hf:"):
        teacher, source = resolve_teacher(loaded, data)  # a pretrained model: its weights come with it
    elif loaded.resolved["teacher"] and source and Path(source["weights"]).is_file():
        # the exact teacher weights the student was distilled from, never a retrained one
        pinned = {**loaded.resolved["teacher"], "checkpoint": source["weights"]}
        teacher, source = resolve_teacher(from_dict({**loaded.resolved, "teacher": pinned}, "checkpoint"), data)
    module = build_module(recipe, loaded.resolved, data, teacher, source)
    device_keys = ("accelerator", "devices", "num_nodes", "precision", "strategy")
    device_args = with_strategy({k: v for k, v in recipe.trainer.items() if k in device_keys}, recipe.fsdp)
    trainer = build_trainer(**device_args, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    run = trainer.validate if stage == "validate" else trainer.test
    (metrics,) = run(module, datamodule=data, ckpt_path=str(checkpoint), weights_only=True, verbose=False)
    leave_process_group()
    return {k: float(v) for k, v in metrics.items()}


def apply_speed_settings(module: L.LightningModule, speed: SpeedSettings) -> None:
    """channels_last and torch.compile as the recipe's `speed` section asks (in place: state-dict keys unchanged)."""
    models = {name: getattr(module, name, None) for name in ("student", "teacher")}
    if speed.channels_last:
        for model in models.values():
            if model is not None:
                model.to(memory_format=torch.channels_last)
    for name, wanted in (("student", speed.compile_student), ("teacher", speed.compile_teacher)):
        if wanted and models[name] is not None:
            models[name].compile()
