"""Tasks: one LightningModule per kind of training, each registered with the `TaskSpec` that describes it.

Importing this package imports every module in it, so a task module added here registers itself with no other
file changed; `distill.tasks.spec.TASKS` holds them by name.
"""

import importlib
import pkgutil

from distill.tasks.context import BuildContext, FrozenModel
from distill.tasks.spec import TASKS, FrozenRole, SummaryRow, TaskSpec, register_task, task_spec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "BuildContext", "FrozenModel", "FrozenRole", "SummaryRow", "TaskSpec", "register_task", "task_spec"]
