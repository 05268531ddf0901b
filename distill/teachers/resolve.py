"""Where the teacher comes from: a checkpoint, or a teacher trained first and kept in a store for reuse."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from distill.config.load import LoadedRecipe, from_dict, plain, teacher_data
from distill.config.schema import Recipe
from distill.engine.runs import external_launch
from distill.engine.wiring import build_model
from distill.errors import DistillError
from distill.models.weights import atomic_save, extract_state_dict, load_weights, read_checkpoint

TEACHER_FILE = "teacher.pt"
# A teacher trained first by `teacher.train` learns with the task named here (default: the recipe's own task).
TEACHER_TASKS = {"dpo": "causal_lm", "draft_distill": "causal_lm", "amu": "classification"}  # LMs learn text
# Settings that change how fast data loads or what is displayed, not what the teacher learns.
DATA_KEYS_IGNORED_IN_KEY = ("num_workers",)
TRAINER_KEYS_IGNORED_IN_KEY = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")
TEACHER_KEYS_IGNORED_IN_KEY = ("cache", "cache_top_k")  # added later: keys of stored recipe teachers stay the same


def resolve_teacher(loaded: LoadedRecipe, data: Any, which: str = "teacher") -> tuple[nn.Module | None, dict | None]:
    """A frozen model (`teacher` or `second_teacher`) with its weights loaded, and a reference to its source."""
    teacher = getattr(loaded.recipe, which)
    if teacher is None:
        return None, None
    model = build_model(teacher.model, data, f"{which}.model")
    if teacher.checkpoint is None and teacher.train is None and teacher.recipe is None:  # pretrained hf: model
        return model, {"model": dict(teacher.model), "weights": teacher.model["name"]}
    if teacher.checkpoint is not None:
        weights = Path(teacher.checkpoint).expanduser().resolve()
    elif teacher.recipe is not None:
        weights = recipe_teacher_path(teacher)
        if not weights.is_file():
            refuse_training_in_external_launch(which, weights)
            train_from_recipe(teacher, weights)
    else:
        weights = stored_teacher_path(loaded, which)
        if not weights.is_file():
            refuse_training_in_external_launch(which, weights)
            train_teacher(loaded, weights, which)
    load_weights(model, weights, f"{which}.checkpoint")
    return model, {"model": dict(teacher.model), "weights": str(weights)}


def refuse_training_in_external_launch(which: str, weights: Path) -> None:
    """Every process of a torchrun/SLURM job would train the teacher at once: they need it trained beforehand."""
    if external_launch() is not None:
        raise DistillError(
            f"{which}: not trained yet ({weights} is missing) and processes started by torchrun or SLURM do not train "
            f"one: run `distill fit` once in a single process first, or give {which}.checkpoint"
        )


def recipe_teacher_path(teacher: Any) -> Path:
    """Where the best student of `teacher.recipe` (with its overrides) is kept: keyed by that run's settings."""
    from distill.config.load import load_recipe

    run = load_recipe(teacher.recipe, teacher.overrides)
    # Sections left at their defaults are not part of the key: a section added to the schema later (with a default)
    # does not orphan the teachers already stored.
    defaults = asdict(Recipe())
    settings = {
        k: v for k, v in run.resolved.items() if k not in ("run", "description") and v != plain(defaults.get(k, {}))
    }
    for section in ("teacher", "second_teacher"):  # where a run's teacher outputs are cached is not what it learns
        if settings.get(section):
            settings[section] = {k: v for k, v in settings[section].items() if k not in TEACHER_KEYS_IGNORED_IN_KEY}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(teacher.store).expanduser().resolve() / f"{run.name}-{key}" / TEACHER_FILE


def train_from_recipe(teacher: Any, weights: Path) -> None:
    """Run `teacher.recipe` as an ordinary run and keep its best student as the teacher."""
    from distill.config.load import load_recipe
    from distill.engine.pipeline import fit

    print(f"No stored teacher for recipe {teacher.recipe} {' '.join(teacher.overrides)}: running it first")
    run = load_recipe(teacher.recipe, [*teacher.overrides, f"run.root={weights.parent}", "run.name=train"])
    result = fit(run)
    state = extract_state_dict(read_checkpoint(result.best_checkpoint, "teacher run"))
    atomic_save({"model": state, "distill": {"recipe": result.resolved, "metrics": result.metrics}}, weights)


def reference_path(loaded: LoadedRecipe) -> Path:
    """The reference model of a recipe-trained teacher: the teacher of `teacher.recipe` (AlignDistil's init)."""
    from distill.config.load import load_recipe

    teacher = loaded.recipe.teacher
    if teacher is None or teacher.recipe is None:
        raise DistillError("init: 'reference' needs teacher.recipe (a recipe whose own teacher is the reference)")
    run = load_recipe(teacher.recipe, teacher.overrides)
    if run.recipe.teacher is None or run.recipe.teacher.train is None:
        raise DistillError(f"init: 'reference': recipe {teacher.recipe} has no teacher trained by the store")
    path = stored_teacher_path(run)
    if not path.is_file():
        raise DistillError(f"init: 'reference': the reference model is not stored yet ({path})")
    return path


def teacher_key(loaded: LoadedRecipe, which: str = "teacher") -> str:
    """A short hash of everything that determines the trained teacher: model, its data and training settings."""
    resolved = loaded.resolved
    train = dict(resolved[which]["train"])
    data = teacher_data(resolved["data"], train.pop("data"))
    data = {k: v for k, v in data.items() if k not in DATA_KEYS_IGNORED_IN_KEY}
    train["trainer"] = {k: v for k, v in train["trainer"].items() if k not in TRAINER_KEYS_IGNORED_IN_KEY}
    settings = {"model": resolved[which]["model"], "data": data, "train": train}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def stored_teacher_path(loaded: LoadedRecipe, which: str = "teacher") -> Path:
    teacher = getattr(loaded.recipe, which)
    name = teacher.model["name"].replace(":", "_").replace("/", "_")
    return Path(teacher.store).expanduser().resolve() / f"{name}-{teacher_key(loaded, which)}" / TEACHER_FILE


def teacher_recipe(loaded: LoadedRecipe, run_root: Path, which: str = "teacher") -> LoadedRecipe:
    """The recipe that trains the teacher: its model as the student, labels only, its own training settings."""
    resolved = loaded.resolved
    train = resolved[which]["train"]
    raw = {
        "description": f"teacher for {loaded.name}",
        "task": TEACHER_TASKS.get(resolved["task"], resolved["task"]),
        "seed": train["seed"],
        "run": {"root": str(run_root), "name": "train"},
        "data": teacher_data(resolved["data"], train["data"]),
        "student": resolved[which]["model"],
        "loss": {"ce_weight": train["ce_weight"], "label_smoothing": train["label_smoothing"], "terms": {}},
        "optimizer": train["optimizer"],
        "scheduler": train["scheduler"],
        "trainer": train["trainer"],
    }
    return from_dict(raw, f"{loaded.path or 'recipe'} ({which}.train)", loaded.path)


def train_teacher(loaded: LoadedRecipe, weights: Path, which: str = "teacher") -> None:
    """Train the teacher with the same machinery as any run, then keep its best weights at `weights`."""
    from distill.engine.pipeline import fit  # the teacher run is an ordinary run

    print(f"No stored teacher for these settings: training it first ({weights.parent})")
    result = fit(teacher_recipe(loaded, weights.parent, which))
    state = extract_state_dict(read_checkpoint(result.best_checkpoint, "teacher run"))
    meta: dict[str, Any] = {"recipe": result.resolved, "metrics": result.metrics}
    atomic_save({"model": state, "distill": meta}, weights)
