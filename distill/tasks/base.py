"""What every task shares: a trainable student, frozen models, the optimizer and schedule from the recipe, and
student-only checkpoints; and, for the tasks that train on weighted loss terms beside CE, those terms."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric, Metric

from distill.tasks.context import OptimizerFactory, SchedulerFactory
from distill.tasks.feature_terms import Captured, FeatureTerm, feature_readers
from distill.tasks.frozen import drop_frozen_keys, freeze
from distill.tasks.loss_terms import LossTerms, call_term, consumes
from distill.tasks.step_log import StepMeans, is_logging_step, write_to_loggers

EVAL_STAGES = ("val", "test")


def mean_metrics(names: Iterable[str]) -> nn.ModuleDict:
    """One weighted running mean per evaluation stage and metric name, keyed `<stage>_<name>` (see `log_mean`)."""
    return nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in EVAL_STAGES for name in names})


def optimizer_steps(trainer: L.Trainer) -> tuple[int, int]:
    """`(optimizer steps per epoch, in the whole run)` as `trainer` will take them.

    Counted from the length of the datamodule's training loader with the Trainer's public settings (the rules of
    `Trainer.estimated_stepping_batches`), rather than through that property: it makes Lightning build its own
    training loader and draw a first batch before a resumed run has restored its epoch, and a run would then train
    its first epoch in the wrong order. tests/tasks/test_optimizer_steps.py holds the two equal.
    """
    if trainer.datamodule is None:  # loaders given directly: no epoch-seeded order to protect
        total = int(trainer.estimated_stepping_batches)
        return max(1, -(-total // max(1, trainer.max_epochs or 1))), total
    batches = len(trainer.datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    if trainer.max_epochs == -1:
        return per_epoch, trainer.max_steps
    total = per_epoch * max(trainer.max_epochs or 1, 1)
    return per_epoch, min(total, trainer.max_steps) if trainer.max_steps != -1 else total


class DistillationTask(L.LightningModule):
    """Base of the task modules. Frozen models (`frozen`: by role, e.g. `teacher`, `second_teacher`) are frozen,
    pinned in eval mode, kept out of the optimizer and out of checkpoints, which record `sources` instead (where
    each came from), with the resolved `recipe` and the `data_record` (`data.record`: the sizes and tokenizer the
    models took from the data, so that `distill export` rebuilds the student without the data).

    Subclasses implement `training_step` and `evaluate_batch`; a subclass whose training reads other data than the
    datamodule's (AMU: cached features) overrides `training_data`.
    """

    def __init__(
        self,
        student: nn.Module,
        frozen: Mapping[str, nn.Module | None] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        sources: Mapping[str, dict[str, Any]] | None = None,
        recipe: dict[str, Any] | None = None,
        data_record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.frozen_names: list[str] = []  # frozen models, kept out of checkpoints
        for name, model in (frozen or {}).items():
            self.add_frozen(name, model)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.SGD(params, lr=0.01))
        self.scheduler_factory = scheduler
        self.sources = dict(sources or {})
        self.recipe = recipe
        self.data_record = data_record
        self.step_means = StepMeans()  # the training step's logged scalars, kept on the device between logs
        self.progress_values: dict[str, float] = {}  # the latest logged means the progress bar shows
        self.marks_graph_steps = False  # set when the models run as CUDA graphs (distill.engine.wiring)

    def add_frozen(self, name: str, model: nn.Module | None) -> None:
        """Hold `model` as the frozen model `name` (None: the role is empty)."""
        setattr(self, name, freeze(model) if model is not None else None)
        self.frozen_names.append(name)

    # -- frozen-model hygiene ---------------------------------------------------------------------------------------
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
        # Under distill's FSDP strategy (engine.fsdp) the student is sharded and the frozen models placed here,
        # before the optimizer is built; other strategies have nothing to do.
        shard_task = getattr(self.trainer.strategy, "shard_task", None)
        if shard_task is not None:
            shard_task(self)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.marks_graph_steps:  # compiled with CUDA graphs (distill.engine.compile)
            torch.compiler.cudagraph_mark_step_begin()

    def on_fit_start(self) -> None:
        # Lightning warns about modules in eval mode at the start of training: the frozen models are, on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The modules whose weights train (sharded by FSDP): the student, and trainable loss terms if any."""
        return {"student": self.student}

    def training_data(self, data: L.LightningDataModule) -> L.LightningDataModule:
        """The datamodule training reads: the recipe's, unless the task trains on data of its own."""
        return data

    # -- evaluation -------------------------------------------------------------------------------------------------
    def evaluate_batch(self, batch: Any, batch_idx: int, stage: str) -> None:
        """Update and log the `stage` ("val" or "test") metrics for one batch."""
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "test")

    def on_validation_epoch_start(self) -> None:
        self.logged_this_epoch: set[str] = set()  # the metrics handed to Lightning in this evaluation epoch

    def on_test_epoch_start(self) -> None:
        self.logged_this_epoch = set()

    def log_metric(self, name: str, metric: Metric, prog_bar: bool = False) -> None:
        """Hand the running `metric` (updated at every batch) to Lightning as `name`, once an evaluation epoch:
        Lightning computes it, across ranks, at the epoch's end. (A `self.log` call at every batch costs a few hundred
        microseconds of host time each.)"""
        logged = self.__dict__.setdefault("logged_this_epoch", set())
        if name not in logged:
            logged.add(name)
            self.log(name, metric, prog_bar=prog_bar)

    def log_mean(self, stage: str, name: str, value: torch.Tensor, weight: float, prog_bar: bool = False) -> None:
        """Add `value`, a mean over `weight` items, to the running mean `self.means[<stage>_<name>]` (made by
        `mean_metrics`) and log it as `<stage>/<name>`: the epoch value weighs every item alike, across batches and
        ranks."""
        metric = self.means[f"{stage}_{name}"]
        metric.update(value, weight=weight)
        self.log_metric(f"{stage}/{name}", metric, prog_bar=prog_bar)

    # -- training logs ----------------------------------------------------------------------------------------------
    def log_training(self, values: dict[str, torch.Tensor], shown: tuple[str, ...] = ("loss",)) -> None:
        """Log the training step's scalars `values` as `train/<name>`: kept on the device every step, their means
        since the last log written to the loggers at Lightning's logging steps and the epoch's last batch, where they
        also become `trainer.callback_metrics` (distill.tasks.step_log); the names in `shown` also go to the progress
        bar."""
        self.step_means.add(values)
        trainer = self._trainer
        if trainer is None or not is_logging_step(trainer):
            return
        means = self.step_means.take()
        logged = {f"train/{name}": value for name, value in means.items()}
        write_to_loggers(trainer, logged)
        if trainer.is_last_batch:  # what monitors read: a few calls an epoch
            for name, value in logged.items():
                self.log(name, value, logger=False)
        self.progress_values = {f"train/{name}": means[name] for name in shown if name in means}

    # -- optimization -----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        steps_per_epoch, total_steps = optimizer_steps(self.trainer)
        scheduler = self.scheduler_factory(optimizer, steps_per_epoch, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints: what trains, and where the frozen models came from ---------------------------------------------
    def without_frozen(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` (this module's state dict) without the frozen models' entries."""
        return drop_frozen_keys(state, tuple(f"{name}." for name in self.frozen_names))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.without_frozen(checkpoint["state_dict"])
        untrained = self.untrained_student_keys()
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k not in untrained}
        checkpoint["distill"] = {"sources": self.sources, "recipe": self.recipe, "data_record": self.data_record}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen models are not in the file: give strict loading the ones we already hold.
        checkpoint["state_dict"] = {**checkpoint["state_dict"], **self.frozen_state()}

    def untrained_student_keys(self) -> set[str]:
        """State keys of the student's parameters that do not train (a LoRA student's base weights): rebuilt from
        the recipe, so checkpoints hold the adapters only."""
        return {
            f"student.{name}"
            for name, parameter in self.student.named_parameters(remove_duplicate=False)
            if not parameter.requires_grad
        }

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """What checkpoints leave out, as this module holds it: the frozen models and the student's untrained
        parameters."""
        frozen = {
            f"{name}.{k}": v for name, model in self.frozen_models().items() for k, v in model.state_dict().items()
        }
        untrained = self.untrained_student_keys()
        student = {f"student.{k}": v for k, v in self.student.state_dict().items() if f"student.{k}" in untrained}
        return {**frozen, **student}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what a checkpoint holds (the student and trainable terms) into this module; the frozen models stay
        as they are. A checkpoint of another student raises a ValueError naming the keys that do not match."""
        result = self.load_state_dict({**state, **self.frozen_state()}, strict=False)
        if result.missing_keys or result.unexpected_keys:
            missing, unexpected = result.missing_keys, result.unexpected_keys
            raise ValueError(
                f"{len(missing)} missing keys{f' (e.g. {missing[0]})' if missing else ''}, "
                f"{len(unexpected)} unexpected{f' (e.g. {unexpected[0]})' if unexpected else ''}"
            )


class WeightedTermsTask(DistillationTask):
    """A task that trains on `ce_weight * CE + sum_i weight_i * term_i`: terms whose kind (`losses.consumes`) the
    task feeds, each called with that kind's inputs from what the task offers (`call_term`). Terms need a teacher,
    or its stored outputs (`teacher_stored`: the teacher's outputs are read from `teacher.cache`, not computed)."""

    def __init__(
        self,
        student: nn.Module,
        frozen: Mapping[str, nn.Module | None] | None = None,
        terms: LossTerms | None = None,
        ce_weight: float = 1.0,
        accepts: frozenset[str] = frozenset(),
        teacher_stored: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(student, frozen, **common)
        terms = terms or {}
        if terms and getattr(self, "teacher", None) is None and not teacher_stored:
            raise ValueError(f"loss terms {sorted(terms)} need a teacher")
        for name, (_, module) in terms.items():
            kind = consumes(module, name).kind
            if kind not in accepts:
                raise ValueError(f"loss term {name} consumes {kind}; {type(self).__name__} feeds {sorted(accepts)}")
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.ce_weight = ce_weight
        # the layers feature terms read on each side (resolved now, before a strategy wraps or shards the models)
        self.student_layers, self.teacher_layers = feature_readers(self.terms, student, getattr(self, "teacher", None))

    def trainable_modules(self) -> dict[str, nn.Module]:
        trainable = super().trainable_modules()
        for name, term in self.terms.items():  # their gradients must be averaged over the ranks too
            if any(p.requires_grad for p in term.parameters()):
                trainable[f"terms.{name}"] = term
        return trainable

    def term_values(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        inputs: dict[str, Any],
        features: tuple[Captured, Captured] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, called with the inputs of its declared kind: logit terms with the logits,
        feature terms with their layers' `features` (the student's and the teacher's, read during this step)."""
        if not self.has_feature_terms:  # logit terms only, in their order
            return {name: call_term(term, student_logits, teacher_logits, inputs) for name, term in self.terms.items()}
        values = {
            name: call_term(term, student_logits, teacher_logits, inputs) for name, term in self.logit_terms().items()
        }
        values |= self.feature_values(features, inputs)
        return {name: values[name] for name in self.terms}

    def logit_terms(self) -> dict[str, nn.Module]:
        return {name: term for name, term in self.terms.items() if not isinstance(term, FeatureTerm)}

    def feature_values(
        self, features: tuple[Captured, Captured] | None, inputs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The feature terms' values on the step's `features` (the student's and the teacher's read layers)."""
        values = {}
        for name, term in self.terms.items():
            if isinstance(term, FeatureTerm):
                assert features is not None, "a feature term needs the step's features"
                student, teacher = features[0].select(term.student_layers), features[1].select(term.teacher_layers)
                values[name] = call_term(term, student, teacher, inputs)
        return values

    @property
    def has_feature_terms(self) -> bool:
        return bool(self.student_layers.taps)

    def total_loss(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        # named in the message if the loss is ever not finite; set past nn.Module's __setattr__, a cost every step
        self.__dict__["last_parts"] = parts
        return self.weighted_sum(parts)

    def weighted_sum(self, parts: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """`sum_i weight_i * part_i` over `parts` (CE weighs `ce_weight`)."""
        total = None
        for name, value in parts.items():  # not sum(): its start, 0, would add one more operation to every step
            weight = self.ce_weight if name == "ce" else self.weights[name]
            weighted = value if weight == 1 else weight * value
            total = weighted if total is None else total + weighted
        return 0.0 if total is None else total

    def log_parts(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        self.log_training({"loss": loss, **parts})
