"""The build context: everything a task's `build` function receives, made once by the engine for fit, validate and
test alike (so evaluation builds a task exactly as training did)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from distill.config.schema import Recipe
from distill.data.hub import hub_origin
from distill.data.interface import DataSource
from distill.data.record import data_record
from distill.errors import DistillError
from distill.models import create_model, model_for_data
from distill.models.lora import LoRASettings, add_lora
from distill.models.weights import load_weights
from distill.tasks.feature_terms import Probe, build_feature_terms, reads_features
from distill.tasks.loss_terms import LOSSES, LossTerms, build_loss, build_terms
from losses.stored_teacher import StoredTopK

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# (optimizer, steps_per_epoch, total_steps) -> per-step scheduler
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], torch.optim.lr_scheduler.LRScheduler]


class TeacherOutputs(Protocol):
    """A store of the teacher's outputs per (epoch, sample), read instead of running the teacher (teacher.cache)."""

    def read(self, epoch: int, indices: torch.Tensor) -> torch.Tensor | None: ...

    def write(self, epoch: int, indices: torch.Tensor, logits: torch.Tensor) -> None: ...

    def flush(self) -> None: ...


class TokenTeacherOutputs(Protocol):
    """A store of a language-model teacher's top-k per (split, row, position) (teacher.cache on token data)."""

    k: int  # entries kept per position
    vocab_size: int  # the teacher's output rows

    def read(self, split: str, indices: torch.Tensor, positions: int | None = None) -> StoredTopK | None: ...

    def write(self, split: str, indices: torch.Tensor, stored: StoredTopK) -> None: ...

    def flush(self) -> None: ...


@dataclass
class FrozenModel:
    """A frozen model with its weights loaded, and what it is: `{"model": spec, "weights": path or hub name}`,
    recorded in checkpoints so that evaluation uses exactly these weights. `model` is None when the run reads all
    of its outputs from `teacher.cache` and never loads it."""

    model: nn.Module | None
    source: dict[str, Any]


@dataclass
class BuildContext:
    """What a task is built from.

    Args:
        recipe: the checked recipe.
        resolved: the same as plain data, stored in checkpoints.
        data: the datamodule (set up).
        settings: the task's own recipe section (its spec's `settings` dataclass), or None.
        frozen: the frozen models by role (`teacher`, `second_teacher`), weights loaded.
        optimizer: builds the optimizer from the trainable parameters.
        scheduler: builds the per-step schedule, or None for a constant learning rate.
        init: the student's first weights: None (fresh), "teacher" (a copy) or a weights file.
        teacher_outputs: the teacher-output cache of `teacher.cache`, for tasks that read it.
        teacher_responses: the store of the teacher's generated responses a task's settings name (`responses`).
        training: False when the task is built to evaluate a checkpoint (a task may skip training-only work).
    """

    recipe: Recipe
    resolved: dict[str, Any]
    data: DataSource
    settings: Any
    frozen: dict[str, FrozenModel]
    optimizer: OptimizerFactory
    scheduler: SchedulerFactory | None
    init: str | None = None
    teacher_outputs: TeacherOutputs | TokenTeacherOutputs | None = None
    teacher_responses: Any = None  # the teacher's stored responses (`causal_lm.responses`), for sequence-level KD
    training: bool = True
    extra_sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in (None, "teacher"):  # recorded, so that evaluation starts a reference from the same file
            self.extra_sources["student_init"] = {"weights": str(self.init)}

    # -- frozen models ------------------------------------------------------------------------------------------------
    def model(self, role: str) -> nn.Module | None:
        frozen = self.frozen.get(role)
        return frozen.model if frozen is not None else None

    @property
    def teacher(self) -> nn.Module | None:
        return self.model("teacher")

    def sources(self) -> dict[str, dict[str, Any]]:
        """Where every frozen model (and the student's starting weights, when read from a file) came from, and the
        Hub commit of every `hf:` student, tokenizer and dataset the recipe names."""
        frozen = {role: frozen.source for role, frozen in self.frozen.items()}
        return {**frozen, **self.extra_sources, **hub_sources(self.recipe)}

    # -- the student ----------------------------------------------------------------------------------------------
    def student(self) -> nn.Module:
        """The recipe's student, sized by the data, starting from `init`; with `lora`, its layers adapted and only the
        adapters trainable."""
        spec = dict(self.recipe.student)
        lora = spec.pop("lora", None)
        student = model_for_data(spec, self.data, "student")
        self.initialize(student)
        if lora is not None:
            student = add_lora(student, LoRASettings(**lora))
        return student

    def initialize(self, student: nn.Module) -> None:
        """The student's first weights: fresh (None), a copy of the teacher's ('teacher'), or read from a file."""
        if self.init is None:
            return
        if self.init == "teacher":
            if self.teacher is None:
                raise DistillError("init: 'teacher' needs a teacher section")
            try:
                student.load_state_dict(self.teacher.state_dict())
            except RuntimeError as exc:
                raise DistillError(
                    f"init: the student cannot start from the teacher: {str(exc).splitlines()[0]}"
                ) from None
            student.requires_grad_(True)
            return
        load_weights(student, self.init, "init")

    def model_from_spec(self, what: str, **injected: Any) -> nn.Module:
        """The recipe's student built by its registry name with `injected` arguments (e.g. a draft's target)."""
        spec = self.recipe.student
        try:
            return create_model(spec["name"], **injected, **{k: v for k, v in spec.items() if k != "name"})
        except DistillError as exc:
            raise DistillError(f"{what}: {exc}") from None

    # -- losses and what every task module takes ---------------------------------------------------------------------
    def terms(self, student: nn.Module | None = None, probe: Probe | None = None) -> LossTerms:
        """The recipe's loss terms; feature terms are checked and shaped on one `probe` pass of `student` and the
        teacher (tasks that feed no features pass neither)."""
        specs = self.recipe.loss.terms
        features = {name: spec for name, spec in specs.items() if reads_features(LOSSES.get(spec["loss"]))}
        built = build_terms({name: spec for name, spec in specs.items() if name not in features})
        if features:
            if student is None or probe is None:
                raise DistillError(f"loss.terms.{next(iter(features))}: task {self.recipe.task} feeds no features")
            num_samples = len(self.data.train_set)
            built |= build_feature_terms(features, LOSSES.get, student, self.teacher, probe, num_samples)
        return {name: built[name] for name in specs}  # in the recipe's order

    def objective(self) -> nn.Module:
        """The task's one objective (its spec says which; the recipe check made it the only term)."""
        (term,) = self.recipe.loss.terms.values()
        return build_loss(term)

    def common(self) -> dict[str, Any]:
        """The arguments every task module takes: optimizer and schedule factories, sources, the recipe, and what
        the models took from the data (`data.record`: kept in checkpoints, so the student is rebuilt without it)."""
        return {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "sources": self.sources(),
            "recipe": self.resolved,
            "data_record": data_record(self.data),
        }


def hub_sources(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """`{"student": ..., "data.<key>": ...}`: what `hub_origin` records for each `hf:` name in the student's and the
    data's sections (the frozen models record theirs in their own sources). Datasets are `data.source` and
    `data.validation`, each a name or a mapping `{path, revision, ...}`; other `hf:` data keys name tokenizers and
    processors."""
    found = {}
    student = recipe.student or {}
    if str(student.get("name", "")).startswith("hf:"):
        found["student"] = {"hub": hub_origin(student["name"].removeprefix("hf:"), student.get("revision"))}
    data = recipe.data or {}
    for key, value in data.items():
        if key in DATASET_KEYS:
            path, revision = dataset_name(value, data.get("revision") if key == "source" else None)
            if path.startswith("hf:"):
                found[f"data.{key}"] = {"hub": hub_origin(path.removeprefix("hf:"), revision, "dataset")}
        elif isinstance(value, str) and value.startswith("hf:"):
            found[f"data.{key}"] = {"hub": hub_origin(value.removeprefix("hf:"))}
    return found


DATASET_KEYS = ("source", "validation")


def dataset_name(value: Any, flat_revision: str | None) -> tuple[str, str | None]:
    """A data source written as a name or as `{path, revision, ...}`: its path and the revision asked for."""
    if isinstance(value, dict):
        return str(value.get("path") or ""), value.get("revision") or flat_revision
    return (value if isinstance(value, str) else ""), flat_revision
