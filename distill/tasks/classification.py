"""Distillation for image classification: a trainable student, a frozen teacher, weighted loss terms."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from distill.tasks.base import DistillationTask, LossTerms, OptimizerFactory, SchedulerFactory
from distill.teachers.output_cache import TeacherCache


class DistillationModule(DistillationTask):
    """Trains `student` on `ce_weight * CE + sum_i weight_i * term_i(student_logits, teacher_logits, target)`.

    The teacher is frozen, pinned in eval mode, run under no_grad, kept out of the optimizer and out of
    checkpoints (which record `teacher_source` instead). Without a teacher the student trains on CE alone.

    Args:
        student: the model being trained.
        teacher: the frozen teacher, or None.
        num_classes: number of classes, for the accuracy metrics.
        terms: loss terms by name, each `(weight, module)`; a module's own parameters are trained too.
        ce_weight: weight of cross-entropy on the labels.
        label_smoothing: label smoothing of that cross-entropy.
        optimizer: builds the optimizer from the trainable parameters.
        scheduler: builds a per-step schedule, or None for a constant learning rate.
        teacher_source: where the teacher came from, stored in checkpoints in place of its weights.
        recipe: the resolved recipe, stored in checkpoints so `distill validate/test` can rebuild the run.
        teacher_cache: the teacher's outputs per (epoch, sample), read instead of running the teacher when a
            training batch carries its sample indices (`(x, y, indices)`, on-device data) and written otherwise.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        num_classes: int,
        terms: LossTerms | None = None,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        teacher_source: dict[str, Any] | None = None,
        recipe: dict[str, Any] | None = None,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        super().__init__(student, teacher, terms, ce_weight, optimizer, scheduler, teacher_source, recipe)
        self.label_smoothing = label_smoothing
        self.teacher_cache = teacher_cache
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{what}": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
                for what in ("acc", "agreement", "teacher_acc")
            }
        )
        # Teacher predictions on the (unshuffled) validation set, by batch index: computed in the first
        # validation epoch, which also logs the teacher's accuracy once; reused for agreement afterwards.
        self._teacher_val_preds: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
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
    ) -> dict[str, torch.Tensor]:
        """Each unweighted loss term by name; `epoch` (1-based) reaches the terms that take it (DKD's warm-up)."""
        parts = {}
        if self.ce_weight:
            parts["ce"] = F.cross_entropy(student_logits.float(), target, label_smoothing=self.label_smoothing)
        inputs = {"target": target} if epoch is None else {"target": target, "epoch": epoch}
        return {**parts, **self.term_values(student_logits, teacher_logits, inputs)}

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y = batch[:2]  # (B, C, H, W), (B,); on-device data adds the sample indices
        indices = batch[2] if len(batch) > 2 else None
        # The teacher first: run while the student's activations are alive, it made the CPU step ~10% slower
        # (benchmarks/training_step_overhead.py).
        teacher_logits = self.training_teacher_logits(x, indices) if len(self.terms) else None
        student_logits = self.student(x)  # (B, K)
        parts = self.loss_parts(student_logits, teacher_logits, y, epoch=self.current_epoch + 1)
        loss = self.total_loss(parts)
        self.log("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value)
        self.metrics["train_acc"](student_logits, y)
        self.log("train/acc", self.metrics["train_acc"], on_step=False, on_epoch=True)
        return loss

    def evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> None:
        x, y = batch
        student_logits = self.student(x)
        self.log(f"{stage}/loss", F.cross_entropy(student_logits.float(), y), sync_dist=True)
        self.metrics[f"{stage}_acc"](student_logits, y)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], prog_bar=True)
        if self.teacher is None:
            return
        teacher_preds = self._teacher_preds(x, y, batch_idx, stage)
        self.metrics[f"{stage}_agreement"](student_logits, teacher_preds)
        self.log(f"{stage}/agreement", self.metrics[f"{stage}_agreement"])

    def _teacher_preds(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int, stage: str) -> torch.Tensor:
        cached = stage == "val" and not self.trainer.sanity_checking
        if cached and batch_idx in self._teacher_val_preds:
            return self._teacher_val_preds[batch_idx]
        teacher_logits = self.teacher_logits(x)
        self.metrics[f"{stage}_teacher_acc"](teacher_logits, y)
        self.log(f"{stage}/teacher_acc", self.metrics[f"{stage}_teacher_acc"])
        preds = teacher_logits.argmax(dim=-1)
        if cached:
            self._teacher_val_preds[batch_idx] = preds
        return preds
