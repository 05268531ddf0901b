"""Few-shot CLIP with the AMU logit bias (methods.md section 9): a frozen zero-shot CLIP classifier (the teacher), a
frozen auxiliary model (the second teacher) and a trainable AMU head (the student) on the auxiliary features."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from distill.data.feature_cache import CachedTrainingData, FewShotFeatures
from distill.models.features import feature_extractor
from distill.tasks.base import DistillationTask, OptimizerFactory, SchedulerFactory, mean_metrics
from distill.tasks.frozen import freeze
from losses import AMULogitBias, AMULoss

BRANCHES = ("acc", "zero_shot_acc", "aux_acc")  # accuracy of the AMU prediction, CLIP alone, the auxiliary head alone


class AMUModule(DistillationTask):
    """Trains `head(clip_logits, aux_features) -> (fused, aux)` with `objective(fused, aux, target)`.

    Training reads the few-shot set's cached features (`features`: `clip` and `aux` outputs per augmented view),
    so the frozen models do not run during training epochs; validation and test run them on images. Logged:
    `train/loss`, `train/fused_ce`, `train/aux_ce`; `{val,test}/acc` (fused), `zero_shot_acc`, `aux_acc`, `loss`.

    Args:
        head: the AMU head, initialized from the few-shot features.
        clip: the frozen zero-shot classifier, images -> `[B, C]` logits.
        aux: the frozen auxiliary model; its features are what its last linear layer reads (timm: pre-logits).
        objective: the AMU loss.
        features: the cached few-shot features (None when only evaluating).
        batch_size: training batch size over the cached features.
        seed: shuffling seed of the cached features.
        optimizer, scheduler, teacher_source, recipe: as every task.
    """

    def __init__(
        self,
        head: AMULogitBias,
        clip: nn.Module,
        aux: nn.Module,
        objective: AMULoss,
        features: FewShotFeatures | None = None,
        batch_size: int = 8,
        seed: int = 0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        teacher_source: dict[str, Any] | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(head, clip, {}, 0.0, optimizer, scheduler, teacher_source, recipe)
        self.second_teacher = freeze(aux)
        self.frozen_names.append("second_teacher")
        self.aux_features = feature_extractor(self.second_teacher, "second_teacher")
        self.objective = objective
        self.features = features
        self.batch_size, self.seed = batch_size, seed
        self.means = mean_metrics((*BRANCHES, "loss"))

    def training_data(self, images: L.LightningDataModule) -> L.LightningDataModule:
        """Training batches from the cached features; validation and test from `images`."""
        if self.features is None:
            raise ValueError("AMUModule needs the cached few-shot features to train")
        return CachedTrainingData(images, self.features, self.batch_size, self.seed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.branches(images)[0]

    @torch.no_grad()
    def frozen_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher(images), self.aux_features(images)

    def branches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(fused, zero_shot, aux)` logits `[B, C]` of a batch of images."""
        clip_logits, aux_features = self.frozen_outputs(images)
        fused, aux = self.student(clip_logits, aux_features)
        return fused, clip_logits, aux

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        clip_logits, aux_features, target = batch
        fused, aux = self.student(clip_logits, aux_features)
        fused_ce, aux_ce = self.objective.parts(fused, aux, target)
        loss = self.objective.combine(fused_ce, aux_ce)
        self.last_parts = {"fused_ce": fused_ce, "aux_ce": aux_ce}  # named if the loss is not finite
        self.log_dict({"train/loss": loss, "train/fused_ce": fused_ce, "train/aux_ce": aux_ce}, prog_bar=False)
        return loss

    def evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> None:
        images, target = batch
        fused, zero_shot, aux = self.branches(images)
        for name, logits in zip(BRANCHES, (fused, zero_shot, aux), strict=True):
            correct = (logits.argmax(dim=1) == target).float()
            self.log_mean(stage, name, correct.mean(), len(target), prog_bar=name == "acc")
        self.log_mean(stage, "loss", self.objective(fused, aux, target), len(target))
