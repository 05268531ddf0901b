"""Tasks as registered units. Each task module describes itself in one `TaskSpec` and registers it in `TASKS`: how
it is built, what it monitors and reports, which frozen models it needs, which loss terms it can feed, what a teacher
trained for it is, and its own recipe section. Nothing outside the task's module knows any of this; adding a task
is one module (see docs/design.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from distill.registry import Registry

if TYPE_CHECKING:
    from distill.config.schema import Recipe
    from distill.tasks.base import DistillationTask
    from distill.tasks.context import BuildContext

FROZEN_SECTIONS = ("teacher", "second_teacher")  # the recipe sections that name frozen models


@dataclass(frozen=True)
class FrozenRole:
    """A frozen model a task reads, given by the recipe section of the same name (`teacher`, `second_teacher`)."""

    what: str  # what it is for this task, e.g. "the reference model": used in messages
    required: bool = True


@dataclass(frozen=True)
class SummaryRow:
    """One row of the table printed after a run or an evaluation: `metric` without its split prefix."""

    label: str
    metric: str
    percent: bool = False

    def cell(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4f}"


@dataclass(frozen=True)
class TaskSpec:
    """Everything the framework needs to know about one task.

    Args:
        name: the recipe's `task` value.
        description: one line for `distill tasks`.
        build: makes the task module from the shared build context.
        monitor: the validation metric (without `val/`) that picks the best checkpoint, and "max" or "min".
        summary: the rows the run's table prints, in order (rows whose metric was not measured are left out).
        frozen: the frozen models it reads, by recipe section; sections not named here are refused in its recipes.
        objective: the registered loss that is its whole objective (the recipe's only loss term), or None.
        accepts: the loss-term kinds (`losses.consumes`) it feeds, beside its CE on the labels; empty for objective
            tasks.
        teacher_task: the task that trains a teacher for it from `teacher.train` (None: this task).
        settings: a dataclass of settings of its own, read from the recipe section `section`, or None.
        section: the recipe key of those settings (default: the task's name).
        reads_teacher_cache: whether it can read the teacher's outputs from `teacher.cache`.
        check: rules of its own for a recipe, run with the others before anything is built:
            `check(recipe, settings, fail)` (settings: the task's own section) raises `fail(key path, message)`.
        check_data: rules of its own for the data once it is set up, before any frozen model is trained or loaded:
            `check_data(data, settings)` raises a DistillError (what only the rows tell, e.g. packed conversations).
    """

    name: str
    description: str
    build: Callable[[BuildContext], DistillationTask]
    monitor: tuple[str, Literal["max", "min"]]
    summary: tuple[SummaryRow, ...]
    frozen: Mapping[str, FrozenRole] = field(default_factory=lambda: {"teacher": FrozenRole("the teacher", False)})
    objective: str | None = None
    accepts: frozenset[str] = frozenset()
    teacher_task: str | None = None
    settings: type | None = None
    section: str | None = None
    reads_teacher_cache: bool = False
    check: Callable[[Recipe, Any, Callable[[str, str], Exception]], None] | None = None
    check_data: Callable[[Any, Any], None] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.frozen) - set(FROZEN_SECTIONS)
        if unknown:
            raise ValueError(f"task {self.name}: frozen roles must be among {FROZEN_SECTIONS}, got {sorted(unknown)}")
        if self.objective is not None and self.accepts:
            raise ValueError(f"task {self.name}: a task has either an objective or loss-term kinds it accepts")

    @property
    def settings_key(self) -> str | None:
        """The recipe key of the task's own section, or None when it has none."""
        return (self.section or self.name) if self.settings is not None else None

    @property
    def monitor_metric(self) -> tuple[str, str]:
        """`(val/<metric>, mode)`, what the best checkpoint is chosen by."""
        return f"val/{self.monitor[0]}", self.monitor[1]


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add `spec` to the registry (a task module calls this once, at import)."""
    from distill.config.schema import Recipe

    if spec.settings_key in {f.name for f in fields(Recipe)}:
        raise ValueError(f"task {spec.name}: its section '{spec.settings_key}' is a recipe key; name it otherwise")
    TASKS.register(spec.name)(spec)
    return spec


def task_spec(name: str) -> TaskSpec:
    """The registered task `name`, or a DistillError naming the closest. (Importing this module imports the
    `distill.tasks` package first, which registers every bundled task.)"""
    return TASKS.get(name)
