"""Features of a few-shot training set computed once by frozen models and reused every epoch (AMU and other
few-shot heads train only a small head on top of frozen models: running those models every epoch is wasted work).

`FewShotFeatures` holds, for `views` augmented passes over the training set, each frozen model's output; epoch `e`
trains on view `e % views`. `CachedTrainingData` serves those features as the training batches and leaves
validation and test to the image data module (the frozen models run on them once per evaluation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from distill.data.base import EpochSeededLoader
from distill.data.fewshot import dataset_labels
from distill.data.sharding import SeededShardSampler

Extractor = Callable[[torch.Tensor], torch.Tensor]  # a batch of images -> one output per image


@dataclass
class FewShotFeatures:
    """`outputs[name]` is `[views, N, ...]` (view 0 without augmentation when `plain` was asked), `labels` `[N]`."""

    outputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    @property
    def views(self) -> int:
        return next(iter(self.outputs.values())).shape[0]


class ViewOfEpoch(Dataset):
    """The samples of view `epoch_fn() % views`, read at each access: one loader serves every epoch."""

    def __init__(self, features: FewShotFeatures, epoch_fn: Callable[[], int]) -> None:
        self.features, self.epoch_fn = features, epoch_fn

    def __len__(self) -> int:
        return len(self.features.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        view = self.epoch_fn() % self.features.views
        return (*(value[view, index] for value in self.features.outputs.values()), self.features.labels[index])


@torch.no_grad()
def compute_features(
    augmented: Dataset,
    plain: Dataset,
    extractors: dict[str, Extractor],
    views: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> FewShotFeatures:
    """Run every extractor over the `plain` (unaugmented) set once, then over `views - 1` augmented passes of the
    same samples (augmentation seeded by `seed` and the view). View 0 is the plain pass."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in extractors}
    for view in range(views):
        dataset = plain if view == 0 else augmented
        torch.manual_seed(seed * 1_000 + view)  # the augmentation of each view is replayable
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in extractors}
        for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            images = images.to(device)
            for name, extract in extractors.items():
                parts[name].append(extract(images).float().cpu())
        for name in extractors:
            outputs[name].append(torch.cat(parts[name]))
    return FewShotFeatures({k: torch.stack(v) for k, v in outputs.items()}, dataset_labels(plain))


class CachedTrainingData(L.LightningDataModule):
    """Training batches from `features` (view `epoch % views`, shuffled by seed and epoch); validation and test
    from `images`, the image data module."""

    def __init__(self, images: L.LightningDataModule, features: FewShotFeatures, batch_size: int, seed: int) -> None:
        super().__init__()
        self.images, self.features = images, features
        self.batch_size, self.seed = batch_size, seed

    def _epoch(self) -> int:
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        samples = ViewOfEpoch(self.features, self._epoch)
        return EpochSeededLoader(
            samples,
            batch_size=self.batch_size,
            sampler=SeededShardSampler(samples),
            seed=self.seed,
            epoch_fn=self._epoch,
        )

    def val_dataloader(self) -> DataLoader:
        return self.images.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.images.test_dataloader()
