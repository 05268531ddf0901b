"""What every distillation task shares: a trainable student, a frozen teacher, weighted loss terms, the optimizer
and schedule from the recipe, and student-only checkpoints."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from distill.tasks.frozen import drop_teacher_keys, freeze

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# (optimizer, steps_per_epoch, total_steps) -> per-step scheduler
SchedulerFactory = Callable[[torch.optim.Optimizer, int, int], torch.optim.lr_scheduler.LRScheduler]
LossTerms = dict[str, tuple[float, nn.Module]]


EVAL_STAGES = ("val", "test")


def mean_metrics(names: Iterable[str]) -> nn.ModuleDict:
    """One weighted running mean per evaluation stage and metric name, keyed `<stage>_<name>` (see `log_mean`)."""
    return nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in EVAL_STAGES for name in names})


def terms_items(terms: LossTerms) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, (_, module) in terms.items()]


class DistillationTask(L.LightningModule):
    """Base of the task modules. The teacher is frozen, pinned in eval mode, run under no_grad, kept out of the
    optimizer and out of checkpoints (which record `teacher_source` instead).

    A loss term is called `term(student_logits, teacher_logits, **inputs)` where `inputs` holds, of what the task
    offers (`target`, `labels`, `student_mask`, `teacher_mask`, `epoch`...), the names its `forward` takes: loss
    modules stay plain and the task needs no per-method branches.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        terms: LossTerms | None,
        ce_weight: float,
        optimizer: OptimizerFactory | None,
        scheduler: SchedulerFactory | None,
        teacher_source: dict[str, Any] | None,
        recipe: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        terms = terms or {}
        if terms and teacher is None:
            raise ValueError(f"loss terms {sorted(terms)} need a teacher")
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.frozen_names = ["teacher"]  # frozen models, kept out of checkpoints; subclasses may add more
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.term_inputs = {
            name: set(list(inspect.signature(m.forward).parameters)[2:]) for name, m in self.terms.items()
        }
        self.ce_weight = ce_weight
        self.optimizer_factory = optimizer or (lambda params: torch.optim.SGD(params, lr=0.01))
        self.scheduler_factory = scheduler
        self.teacher_source = teacher_source
        self.recipe = recipe

    # -- teacher hygiene --------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationTask:
        super().train(mode)
        for model in self.frozen_models().values():
            model.eval()  # pinned: Lightning calls .train() on the whole module every epoch
        return self

    def frozen_models(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.frozen_names if getattr(self, name, None) is not None}

    def setup(self, stage: str) -> None:
        # Before a DDP strategy wraps this module: the frozen models are neither synchronized nor bucketed.
        frozen = [
            f"{name}.{key}"
            for name, model in self.frozen_models().items()
            for key, _ in [*model.named_parameters(), *model.named_buffers()]
        ]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, frozen)

    def configure_model(self) -> None:
        # Under distill's FSDP strategy (distill.engine.fsdp) the student is sharded and the frozen models placed here,
        # before the optimizer is built; other strategies have nothing to do.
        shard_task = getattr(self.trainer.strategy, "shard_task", None)
        if shard_task is not None:
            shard_task(self)

    def on_fit_start(self) -> None:
        # Lightning warns about modules in eval mode at the start of training: the frozen teacher is, on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = list(self.student.parameters()) + list(self.terms.parameters())
        return [p for p in params if p.requires_grad]

    # -- evaluation -------------------------------------------------------------------------------------------------
    def evaluate_batch(self, batch: Any, batch_idx: int, stage: str) -> None:
        """Update and log the `stage` ("val" or "test") metrics for one batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "test")

    def log_mean(self, stage: str, name: str, value: torch.Tensor, weight: float, prog_bar: bool = False) -> None:
        """Add `value`, a mean over `weight` items, to the running mean `self.means[<stage>_<name>]` (made by
        `mean_metrics`) and log it as `<stage>/<name>`: the epoch value weighs every item alike, across batches and
        ranks."""
        metric = self.means[f"{stage}_{name}"]
        metric.update(value, weight=weight)
        self.log(f"{stage}/{name}", metric, prog_bar=prog_bar)

    # -- loss -------------------------------------------------------------------------------------------------------
    def term_values(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, inputs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Each term's unweighted value; a term gets the entries of `inputs` its forward names."""
        return {
            name: term(
                student_logits, teacher_logits, **{k: v for k, v in inputs.items() if k in self.term_inputs[name]}
            )
            for name, term in self.terms.items()
        }

    def total_loss(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        self.last_parts = parts  # named in the message if the loss is ever not finite
        weights = {"ce": self.ce_weight, **self.weights}
        return sum(weights[name] * value for name, value in parts.items())

    # -- optimization -----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        # Counting the steps made Lightning build the train loader and draw its first batch before a resumed run
        # restores its epoch counter: drop that loader so the run builds it afresh, for the right epoch.
        self.trainer.fit_loop._combined_loader = None
        max_epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, -(-total_steps // max_epochs))
        scheduler = self.scheduler_factory(optimizer, steps_per_epoch, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints: student only ----------------------------------------------------------------------------------
    def without_frozen(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` (this module's state dict) without the frozen models' entries."""
        return drop_teacher_keys(state, prefix=tuple(f"{name}." for name in self.frozen_names))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.without_frozen(checkpoint["state_dict"])
        checkpoint["distill"] = {"teacher": self.teacher_source, "recipe": self.recipe}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen models are not in the file: give strict loading the ones we already hold.
        for name, model in self.frozen_models().items():
            frozen_state = {f"{name}.{k}": v for k, v in model.state_dict().items()}
            checkpoint["state_dict"] = {**checkpoint["state_dict"], **frozen_state}
