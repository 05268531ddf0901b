"""The teacher store: teachers trained by distill, each kept in a folder named after the settings of the run that
trained it, so any later recipe that needs the same teacher finds it instead of training it again.

One function (`store_key`) turns a teacher run's resolved recipe into its key, whether that run was written by the
user (`teacher.recipe`) or made from `teacher.train`.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from distill.config.load import LoadedRecipe, from_dict, plain, teacher_data
from distill.config.schema import Recipe
from distill.data.download import file_lock
from distill.models.weights import atomic_save, extract_state_dict, read_checkpoint

TEACHER_FILE = "teacher.pt"
# Settings that change how fast a run goes, what it displays or where it writes, not what the teacher learns.
IGNORED_IN_KEY = {
    "data": ("num_workers",),
    "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps"),
    "teacher": ("cache", "cache_top_k"),  # where a run's teacher outputs are cached
    "second_teacher": ("cache", "cache_top_k"),
}


def store_key(resolved: dict[str, Any]) -> str:
    """A short hash of everything in a teacher run's recipe that determines the trained teacher. Sections left at
    their defaults are not part of it, so a section added to the schema later does not orphan stored teachers."""
    defaults = plain(asdict(Recipe()))
    settings = {}
    for section, value in resolved.items():
        if section in ("run", "description") or value == defaults.get(section, object()):
            continue
        ignored = IGNORED_IN_KEY.get(section, ())
        settings[section] = {k: v for k, v in value.items() if k not in ignored} if isinstance(value, dict) else value
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def store_path(store: str, label: str, resolved: dict[str, Any]) -> Path:
    """Where the teacher trained by the run `resolved` is kept: `<store>/<label>-<key>/teacher.pt`."""
    name = label.replace(":", "_").replace("/", "_")
    return Path(store).expanduser().resolve() / f"{name}-{store_key(resolved)}" / TEACHER_FILE


def teacher_run(loaded: LoadedRecipe, which: str, task: str) -> LoadedRecipe:
    """The run that trains the frozen model `which` from its `train` settings: its model as the student, labels
    only (no teacher of its own), trained with `task`."""
    resolved = loaded.resolved
    train = resolved[which]["train"]
    raw = {
        "description": f"{which} for {loaded.name}",
        "task": task,
        "seed": train["seed"],
        "data": teacher_data(resolved["data"], train["data"]),
        "student": resolved[which]["model"],
        "loss": {"ce_weight": train["ce_weight"], "label_smoothing": train["label_smoothing"], "terms": {}},
        "optimizer": train["optimizer"],
        "scheduler": train["scheduler"],
        "trainer": train["trainer"],
    }
    return from_dict(raw, f"{loaded.path or 'recipe'} ({which}.train)", loaded.path)


def keep(best_checkpoint: Path, weights: Path, meta: dict[str, Any]) -> None:
    """Store the student of a finished teacher run as the teacher `weights`, with `meta` (its recipe, metrics)."""
    state = extract_state_dict(read_checkpoint(best_checkpoint, "teacher run"))
    atomic_save({"model": state, "distill": meta}, weights)


def claim(weights: Path, doing: str) -> AbstractContextManager[None]:
    """Hold the store's lock of the teacher `weights` while `doing` (training or fetching it): a second process
    resolving the same teacher waits, then finds it stored instead of doing the work again."""
    return file_lock(weights.with_name(f".{weights.name}.lock"), doing)
