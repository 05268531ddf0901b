"""Distillation for image classification: a trainable student, a frozen teacher, weighted loss terms on class
logits (`task: classification`)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from distill.data.interface import ClassData
from distill.errors import DistillError
from distill.tasks.base import WeightedTermsTask
from distill.tasks.context import BuildContext, TeacherOutputs
from distill.tasks.feature_terms import Captured, Probe
from distill.tasks.loss_terms import LossTerms
from distill.tasks.spec import SummaryRow, TaskSpec, register_task
from distill.tasks.step_log import TrainingAccuracy
from losses.consumes import CLASS_LOGITS, FEATURES

ACCEPTS = frozenset({CLASS_LOGITS, FEATURES})


class ClassificationTask(WeightedTermsTask):
    """Trains `student` on `ce_weight * CE + sum_i weight_i * term_i(student_logits, teacher_logits, target)`.

    The teacher is frozen, pinned in eval mode, run under no_grad, kept out of the optimizer and out of
    checkpoints (which record `sources` instead). Without a teacher the student trains on CE alone. Each term
    consumes class logits (`losses.consumes.CLASS_LOGITS`): it is called `term(student_logits, teacher_logits,
    target)`, plus `epoch` (1-based) when it declares it (DKD's warm-up).

    Args:
        student: the model being trained.
        teacher: the frozen teacher, or None.
        num_classes: number of classes, for the accuracy metrics.
        terms: loss terms by name, each `(weight, module)`; a module's own parameters are trained too.
        ce_weight: weight of cross-entropy on the labels.
        label_smoothing: label smoothing of that cross-entropy.
        teacher_cache: the teacher's outputs per (epoch, sample), read instead of running the teacher when a
            training batch carries its sample indices (`(x, y, indices)`, on-device data) and written otherwise.
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        num_classes: int,
        terms: LossTerms | None = None,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        teacher_cache: TeacherOutputs | None = None,
        **common: Any,
    ) -> None:
        super().__init__(student, {"teacher": teacher}, terms, ce_weight, ACCEPTS, **common)
        self.label_smoothing = label_smoothing
        self.teacher_cache = teacher_cache
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{what}": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("val", "test")
                for what in ("acc", "agreement", "teacher_acc")
            }
            | {f"{stage}_loss": MeanMetric() for stage in ("val", "test")}
        )
        self.train_hits = TrainingAccuracy()
        # Teacher predictions on the (unshuffled) validation set, by batch index: computed in the first
        # validation epoch, which also logs the teacher's accuracy once; reused for agreement afterwards.
        self._teacher_val_preds: dict[int, torch.Tensor] = {}

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # not the decorator: it builds a new context object at every call
            return self.teacher(x)

    def training_teacher_logits(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        """The teacher's logits for a training batch: from the cache when it holds them all, else computed (and
        written to the cache when there is one)."""
        if self.teacher_cache is None or indices is None:
            return self.teacher_logits(x)
        cached = self.teacher_cache.read(self.current_epoch, indices)
        if cached is not None:
            return cached.to(x.device)
        logits = self.teacher_logits(x)
        self.teacher_cache.write(self.current_epoch, indices, logits)
        return logits

    def on_train_start(self) -> None:
        # a model run as CUDA graphs overwrites its outputs at its next replay: its logits cannot be kept for later
        self.train_hits.keep_logits = not self.marks_graph_steps

    def on_train_epoch_end(self) -> None:
        if self.teacher_cache is not None:
            self.teacher_cache.flush()

    # -- steps ------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def loss_parts(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        target: torch.Tensor,
        epoch: int | None = None,
        indices: torch.Tensor | None = None,
        features: tuple[Captured, Captured] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each unweighted loss term by name; `epoch` (1-based) reaches the terms that take it (DKD's warm-up),
        `indices` (the samples' places in the training set) those that keep a memory per sample (CRD), `features`
        (the step's layers of the student and the teacher) the feature terms."""
        parts = {}
        if self.ce_weight:
            logits = student_logits if student_logits.dtype == torch.float32 else student_logits.float()
            parts["ce"] = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        inputs = {"target": target, "epoch": epoch, "indices": indices}
        return {**parts, **self.term_values(student_logits, teacher_logits, inputs, features)}

    def needs_sample_indices(self) -> bool:
        return any("indices" in term.consumes.extra for term in self.terms.values())

    def training_data(self, data: L.LightningDataModule) -> L.LightningDataModule:
        if self.needs_sample_indices():
            data.yield_indices = True  # training batches become (x, y, indices)
        return data

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        # The host's part of this step is what a small model's step on a GPU waits for: it is kept to plain reads
        # of this module's own attributes (benchmarks/step_overhead.py counts its Python lines per step).
        x, y = batch[0], batch[1]  # (B, C, H, W), (B,); on-device data adds the sample indices
        indices = batch[2] if len(batch) > 2 else None
        trainer = self._trainer
        epoch = trainer.current_epoch + 1 if trainer is not None else 1
        if self.has_feature_terms:
            student_logits, teacher_logits, features = self.forward_reading_layers(x, indices)
        else:
            # The teacher first: run while the student's activations are alive, it made the CPU step ~10% slower
            # (benchmarks/training_step_overhead.py).
            teacher_logits = self.training_teacher_logits(x, indices) if self.weights else None
            student_logits, features = self.student(x), None  # (B, K)
        parts = self.loss_parts(student_logits, teacher_logits, y, epoch, indices, features)
        loss = self.total_loss(parts)
        self.log_parts(loss, parts)
        self.train_hits.add(student_logits, y)
        if trainer is not None and trainer.is_last_batch:
            self.log("train/acc", self.train_hits.take(), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def forward_reading_layers(
        self, x: torch.Tensor, indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[Captured, Captured]]:
        """Both models' logits on `x`, with the layers the feature terms read captured as they run."""
        with self.teacher_layers.read() as teacher_features:
            teacher_logits = self.training_teacher_logits(x, indices) if self.weights else None
        with self.student_layers.read() as student_features:
            student_logits = self.student(x)  # (B, K)
        return student_logits, teacher_logits, (student_features, teacher_features)

    def evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> None:
        x, y = batch
        student_logits = self.student(x)
        self.update_metric(stage, "loss", F.cross_entropy(student_logits.float(), y), weight=len(y))
        self.update_metric(stage, "acc", student_logits, y, prog_bar=True)
        if self.teacher is None:
            return
        teacher_preds = self._teacher_preds(x, y, batch_idx, stage)
        self.update_metric(stage, "agreement", student_logits, teacher_preds)

    def update_metric(self, stage: str, name: str, *values: Any, prog_bar: bool = False, **kwargs: Any) -> None:
        """Update `self.metrics[<stage>_<name>]` with this batch's `values` and log it as `<stage>/<name>` (its
        value over the epoch, weighted by samples, across ranks)."""
        metric = self.metrics[f"{stage}_{name}"]
        metric.update(*values, **kwargs)
        self.log_metric(f"{stage}/{name}", metric, prog_bar=prog_bar)

    def _teacher_preds(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int, stage: str) -> torch.Tensor:
        cached = stage == "val" and not self.trainer.sanity_checking
        if cached and batch_idx in self._teacher_val_preds:
            return self._teacher_val_preds[batch_idx]
        teacher_logits = self.teacher_logits(x)
        self.update_metric(stage, "teacher_acc", teacher_logits, y)
        preds = teacher_logits.argmax(dim=-1)
        if cached:
            self._teacher_val_preds[batch_idx] = preds
        return preds


def build(ctx: BuildContext) -> ClassificationTask:
    data = ctx.data
    if not isinstance(data, ClassData):
        raise DistillError(f"data: task classification needs labelled images; {ctx.recipe.data['name']} is not")
    student = ctx.student()
    return ClassificationTask(
        student,
        ctx.teacher,
        num_classes=data.num_classes,
        terms=ctx.terms(student, image_probe(data)),
        ce_weight=ctx.recipe.loss.ce_weight,
        label_smoothing=ctx.recipe.loss.label_smoothing,
        teacher_cache=ctx.teacher_outputs,
        **ctx.common(),
    )


def image_probe(data: ClassData) -> Probe:
    """A forward pass on two blank images of the data's size (what feature terms are checked and shaped on)."""
    shape = (2, data.in_chans, data.image_size, data.image_size)
    return lambda model, device, dtype: model(torch.zeros(shape, device=device, dtype=dtype))


SPEC = register_task(
    TaskSpec(
        name="classification",
        description="image classification: CE on the labels plus weighted terms on the teacher's class logits",
        build=build,
        monitor=("acc", "max"),
        summary=(
            SummaryRow("teacher accuracy", "teacher_acc", percent=True),
            SummaryRow("student accuracy", "acc", percent=True),
            SummaryRow("agreement with the teacher", "agreement", percent=True),
        ),
        accepts=ACCEPTS,
        reads_teacher_cache=True,
    )
)
