"""A run folder and the checkpoints in it, read the one way every reader of a finished run uses (evaluation,
notebooks, benchmarks): its recipe, best and last checkpoints, results, and the frozen models pinned to the exact
weights the student learned from.

```
runs/<name>/version_N/
    recipe.yaml          the resolved recipe
    results.json         test metrics of the best checkpoint
    sources.json         where each frozen model came from, and the Hub commit of every hf: name it read
    data.json            what building the rows cost, per split (rows, dropped, cut per side), for data that counts it
    checkpoints/         best.ckpt, last.ckpt (and previous.ckpt, last.ckpt one save earlier)
    logs/                CSV metrics (logs/resume_K for each resumed session)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config.load import LoadedRecipe, apply_overrides, from_dict, load_recipe
from distill.errors import DistillError
from distill.models.weights import read_checkpoint
from distill.tasks.spec import FROZEN_SECTIONS

RECIPE_FILE = "recipe.yaml"
RESULTS_FILE = "results.json"
SOURCES_FILE = "sources.json"
DATA_FILE = "data.json"
CHECKPOINT_DIR = "checkpoints"
BEST, LAST, PREVIOUS = "best.ckpt", "last.ckpt", "previous.ckpt"


@dataclass
class RunCheckpoint:
    """A checkpoint written by `distill fit`: the module's trained state, the recipe it was trained with, where
    each frozen model (and the student's starting weights) came from, and what the models took from the data
    (`data.record`; None in checkpoints written before it was kept)."""

    path: Path
    state: dict[str, Any]
    recipe: dict[str, Any]
    sources: dict[str, dict[str, Any]]
    data_record: dict[str, Any] | None = None

    @classmethod
    def read(cls, path: str | Path, what: str = "--checkpoint") -> RunCheckpoint:
        path = Path(path)
        data = read_checkpoint(path, what)
        meta = data.get("distill")
        if not isinstance(meta, dict) or not isinstance(meta.get("recipe"), dict):
            raise DistillError(f"{what}: {path} was not written by distill fit; pass --recipe to say how to build it")
        # written before sources were kept per role: only the teacher's
        sources = meta.get("sources") or ({"teacher": meta["teacher"]} if meta.get("teacher") else {})
        return cls(path, data.get("state_dict", {}), meta["recipe"], dict(sources), meta.get("data_record"))

    def pinned(self, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
        """`recipe` (default: the one stored here) with each frozen model read from the file its student learned
        from, never trained again, and the student starting from the same weights. A file that is gone is an
        error: another teacher would give other numbers."""
        pinned = dict(recipe if recipe is not None else self.recipe)
        for role in FROZEN_SECTIONS:
            source = self.sources.get(role)
            if not pinned.get(role) or not source:
                continue
            weights = str(source["weights"])
            if comes_with_weights(source):
                continue
            if not Path(weights).is_file():
                raise DistillError(
                    f"{role}: the weights the student in {self.path} learned from are gone ({weights}); restore "
                    f"them (another {role} would not give this run's results)"
                )
            pinned[role] = {**pinned[role], "checkpoint": weights, "train": None, "recipe": None, "overrides": []}
        start = self.sources.get("student_init")
        if start and pinned.get("init") not in (None, "teacher"):
            pinned["init"] = str(start["weights"])
        return pin_hub_commits(pinned, self.sources)

    def loaded(self, overrides: list[str] = ()) -> LoadedRecipe:
        """The stored recipe, pinned, with `key=value` overrides."""
        return from_dict(apply_overrides(self.pinned(), list(overrides)), f"{self.path} recipe")


class RunFolder:
    """A run's folder (`runs/<name>/version_N`, or a torchrun/SLURM job's)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, checkpoint: str | Path) -> RunFolder:
        """The run folder holding `checkpoint` (`<run>/checkpoints/<file>`)."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def previous(self) -> Path:
        return self.checkpoints / PREVIOUS

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def sources_file(self) -> Path:
        return self.path / SOURCES_FILE

    @property
    def data_file(self) -> Path:
        return self.path / DATA_FILE

    def recipe(self, overrides: list[str] = ()) -> LoadedRecipe:
        if not self.recipe_file.is_file():
            raise DistillError(f"{self.path} is not a run folder: {RECIPE_FILE} is missing")
        return load_recipe(str(self.recipe_file), list(overrides))

    def resumed(self, checkpoint: Path, overrides: list[str] = ()) -> LoadedRecipe:
        """The run's recipe (with `key=value` overrides) to continue from `checkpoint`, its frozen models pinned
        to the weights the student has learned from so far: a resumed run never trains another teacher."""
        loaded = self.recipe(overrides)
        pinned = RunCheckpoint.read(checkpoint, "--resume").pinned(loaded.resolved)
        return from_dict(pinned, f"{self.recipe_file} (resumed from {checkpoint.name})", self.recipe_file)

    def checkpoint(self, which: str = "best") -> RunCheckpoint:
        """The run's `best` or `last` checkpoint."""
        path = {"best": self.best, "last": self.last}[which]
        return RunCheckpoint.read(path, f"run {self.path}")

    def results(self) -> dict[str, Any]:
        if not self.results_file.is_file():
            raise DistillError(f"{self.path} has no {RESULTS_FILE}: the run did not finish")
        return json.loads(self.results_file.read_text())


def comes_with_weights(source: dict[str, Any]) -> bool:
    """Whether a recorded source is a pretrained model (`hf:`, `open_clip:`, timm with `pretrained`) whose weights come
    with it, rather than a weights file."""
    return str(source.get("weights")) == (source.get("model") or {}).get("name")


def pin_hub_commits(recipe: dict[str, Any], sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`recipe` reading every Hub repository at the commit the run read it at (recorded in `sources`): a branch that
    has moved on since would give another model, tokenizer or dataset."""
    pinned = dict(recipe)

    def commit(key: str) -> str | None:
        hub = (sources.get(key) or {}).get("hub") or {}
        return hub.get("commit")

    for role in ("student", *FROZEN_SECTIONS):
        section = pinned.get(role)
        model = section if role == "student" else (section or {}).get("model")
        if not model or commit(role) is None:
            continue
        model = {**model, "revision": commit(role)}
        pinned[role] = model if role == "student" else {**section, "model": model}
    data = dict(pinned.get("data") or {})
    for key, value in list(data.items()):
        found = commit(f"data.{key}")
        if found is None:
            continue
        if key == "source" and (isinstance(value, str) or data.get("revision") is not None):
            data["revision"] = found  # the flat key, where the recipe gives the revision of a named source
        elif key in ("source", "validation"):
            data[key] = {**value, "revision": found} if isinstance(value, dict) else {"path": value, "revision": found}
        else:  # a tokenizer or processor
            data[key] = f"{value.split('@')[0]}@{found}"
    if data:
        pinned["data"] = data
    return pinned
