"""Few-shot CLIP with the AMU logit bias (docs/methods.md, section 9; `task: amu`): a frozen zero-shot CLIP classifier
(the teacher), a frozen auxiliary model (the second teacher) and a trainable AMU head (the student) on the auxiliary
features, which both frozen models compute once over the few-shot set."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from distill.config.schema import setting
from distill.data.feature_cache import CachedTrainingData, FewShotFeatures, compute_features
from distill.data.interface import ClassData
from distill.errors import DistillError
from distill.models.features import feature_extractor
from distill.tasks.base import DistillationTask, mean_metrics
from distill.tasks.context import BuildContext
from distill.tasks.spec import FrozenRole, SummaryRow, TaskSpec, register_task
from losses import AMULogitBias, AMULoss

BRANCHES = ("acc", "zero_shot_acc", "aux_acc")  # accuracy of the AMU prediction, CLIP alone, the auxiliary head alone


@dataclass
class AMUSettings:
    """The recipe's `amu:` section."""

    views: int = setting(10, "passes over the few-shot set whose features are cached (the first unaugmented)")


class AMUTask(DistillationTask):
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
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
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
        **common: Any,
    ) -> None:
        super().__init__(head, {"teacher": clip, "second_teacher": aux}, **common)
        self.aux_features = feature_extractor(self.second_teacher, "second_teacher")
        self.objective = objective
        self.features = features
        self.batch_size, self.seed = batch_size, seed
        self.means = mean_metrics((*BRANCHES, "loss"))

    def training_data(self, images: L.LightningDataModule) -> L.LightningDataModule:
        """Training batches from the cached features; validation and test from `images`."""
        if self.features is None:
            raise ValueError("AMUTask needs the cached few-shot features to train")
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
        self.log_training({"loss": loss, "fused_ce": fused_ce, "aux_ce": aux_ce}, shown=())
        return loss

    def evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> None:
        images, target = batch
        fused, zero_shot, aux = self.branches(images)
        for name, logits in zip(BRANCHES, (fused, zero_shot, aux), strict=True):
            correct = (logits.argmax(dim=1) == target).float()
            self.log_mean(stage, name, correct.mean(), len(target), prog_bar=name == "acc")
        self.log_mean(stage, "loss", self.objective(fused, aux, target), len(target))


def build(ctx: BuildContext) -> AMUTask:
    """The few-shot features computed once by the frozen models (one unaugmented view when only evaluating), and
    the head initialized from them."""
    data = ctx.data
    if not isinstance(data, ClassData):
        raise DistillError(f"data: task amu needs labelled images; {ctx.recipe.data['name']} is not")
    clip, aux = ctx.teacher, ctx.model("second_teacher")
    clip.eval()
    aux.eval()
    device = feature_device(ctx.recipe.trainer)
    extractors = {"clip": clip.to(device), "aux": feature_extractor(aux.to(device), "second_teacher")}
    train = data.train_set
    views = ctx.settings.views if ctx.training else 1
    features = compute_features(
        train, unaugmented(train, data.val_set), extractors, views, device=device, seed=ctx.recipe.seed
    )
    clip.cpu()
    aux.cpu()
    head_args = {k: v for k, v in ctx.recipe.student.items() if k != "name"}
    head = AMULogitBias(features.outputs["aux"][0], features.labels, data.num_classes, **head_args)
    return AMUTask(
        head,
        clip,
        aux,
        ctx.objective(),
        features=features,
        batch_size=data.batch_size,
        seed=ctx.recipe.seed,
        **ctx.common(),
    )


def unaugmented(train: Dataset, val: Dataset) -> Dataset:
    """The training samples with the evaluation transform (a shallow copy: the images are shared), or `train` as it
    is when the sets keep no `transform` to swap."""
    base = train.dataset if isinstance(train, Subset) else train
    if not hasattr(base, "transform") or not hasattr(val, "transform"):
        return train
    plain = copy.copy(base)
    plain.transform = val.transform
    if isinstance(train, Subset):
        subset = Subset(plain, train.indices)
        subset.labels = getattr(train, "labels", None)  # type: ignore[attr-defined]
        return subset
    return plain


def feature_device(trainer: dict[str, Any]) -> torch.device:
    """Where the features are computed: the GPU when the recipe trains on one (or on 'auto' with one present)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


SPEC = register_task(
    TaskSpec(
        name="amu",
        description="few-shot CLIP: the AMU logit bias on an auxiliary model's features, beside zero-shot CLIP",
        build=build,
        monitor=("acc", "max"),
        summary=(
            SummaryRow("AMU accuracy (fused)", "acc", percent=True),
            SummaryRow("zero-shot CLIP accuracy", "zero_shot_acc", percent=True),
            SummaryRow("auxiliary head accuracy", "aux_acc", percent=True),
            SummaryRow("AMU loss", "loss"),
        ),
        frozen={
            "teacher": FrozenRole("the zero-shot CLIP classifier"),
            "second_teacher": FrozenRole("the auxiliary model whose features the head reads"),
        },
        objective="amu",
        teacher_task="classification",  # an auxiliary model trained from `teacher.train` learns the labels
        settings=AMUSettings,
    )
)
