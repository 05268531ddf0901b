"""The base LightningDataModule for image classification, and the dataset registry."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from distill.data.fewshot import few_shot
from distill.data.sharding import EvalShardBatches, SeededShardSampler
from distill.errors import DistillError
from distill.registry import Registry

Sample = tuple[torch.Tensor, int]
Splits = tuple[Dataset, Dataset, Dataset]


def check_at_least(name: str, value: int, minimum: int) -> None:
    """Raise a DistillError naming `data.<name>` unless `value >= minimum`."""
    if value < minimum:
        raise DistillError(f"data.{name} must be >= {minimum}, got {value}")


def check_fraction(name: str, value: float) -> None:
    """Raise a DistillError naming `data.<name>` unless `0 < value < 1`."""
    if not 0.0 < value < 1.0:
        raise DistillError(f"data.{name} must be in (0, 1), got {value}")


class TensorImageDataset(Dataset):
    """Images held in one tensor `[N, C, H, W]` with integer labels `[N]`; `transform` runs per sample."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class SeededLoaders:
    """The loaders every datamodule here shares: a shuffled train loader whose order and augmentation depend only
    on (seed, epoch), and unshuffled val/test loaders. Needs `train_set`, `val_set`, `test_set`, `batch_size`,
    `num_workers`, `seed` and Lightning's `trainer` attribute."""

    def train_dataloader(self) -> DataLoader:
        # Workers restart every epoch so that their RNG is reseeded from (seed, epoch) too.
        return EpochSeededLoader(
            self.train_set,
            seed=self.seed,
            epoch_fn=self._trainer_epoch if self.trainer is not None else None,
            batch_size=self.batch_size,
            sampler=SeededShardSampler(self.train_set),
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def _trainer_epoch(self) -> int:
        # The epoch about to run; Lightning restores it from a checkpoint before it builds the train loader.
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=EvalShardBatches(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


class ClassificationDataModule(SeededLoaders, L.LightningDataModule):
    """Train/val/test splits of an image classification data set.

    Subclasses set `num_classes`, `in_chans` and `image_size` in `__init__` (models are built from
    them before `setup`) and implement `build_datasets`. Samples are `(float32 [C, H, W], int label)`.

    Args:
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        shots: Train on this many images per class only, drawn by `shot_seed` (None: the whole training split).
        shot_seed: Seed of the few-shot draw.
    """

    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str] | None = None  # subclasses with readable names set them (zero-shot prompts)
    on_device = False  # only the CIFAR-100 module keeps its set on the accelerator
    channels_last = False

    def __init__(
        self, *, batch_size: int = 64, num_workers: int = 0, shots: int | None = None, shot_seed: int = 0
    ) -> None:
        super().__init__()
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        if shots is not None:
            check_at_least("shots", shots, 1)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shots = shots
        self.shot_seed = shot_seed
        self.seed = 0  # shuffling and augmentation seed: set from the recipe's `seed` by the framework
        self._splits: Splits | None = None

    def model_args(self, role: str) -> dict[str, int]:
        """What models are sized by: the class count and input channels (the same for teacher and student)."""
        return {"num_classes": self.num_classes, "in_chans": self.in_chans}

    def build_datasets(self) -> Splits:
        """Build `(train_set, val_set, test_set)`; called once, by the first `setup`."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            train, val, test = self.build_datasets()
            if self.shots is not None:
                train = few_shot(train, self.shots, self.shot_seed, self.num_classes)
            self._splits = (train, val, test)

    def _split(self, index: int) -> Dataset:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits[index]

    @property
    def train_set(self) -> Dataset:
        return self._split(0)

    @property
    def val_set(self) -> Dataset:
        return self._split(1)

    @property
    def test_set(self) -> Dataset:
        return self._split(2)


class EpochSeededLoader(DataLoader):
    """A shuffled DataLoader whose order and random augmentation depend only on (seed, epoch).

    Each `iter()` reseeds the shuffling generator (which also seeds the workers) and, for augmentation done in
    the main process, the global RNGs. The epoch comes from `epoch_fn` (the trainer's epoch counter, which a
    resumed run restores before it builds this loader), else from the number of `iter()` calls so far. A run
    resumed from an epoch-end checkpoint therefore sees exactly the batches the uninterrupted run saw.
    """

    def __init__(self, *args: Any, seed: int = 0, epoch_fn: Callable[[], int] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.iterations = 0

    def __iter__(self) -> Any:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.iterations
        self.iterations += 1
        epoch_seed = (self.seed * 1_000_003 + epoch) % 2**32
        self.generator.manual_seed(epoch_seed)
        if isinstance(self.sampler, SeededShardSampler):
            self.sampler.epoch_seed = epoch_seed
        if self.num_workers == 0:
            random.seed(epoch_seed)
            np.random.seed(epoch_seed)
            torch.manual_seed(epoch_seed)
        return super().__iter__()


DATASETS: Registry[type[ClassificationDataModule]] = Registry("dataset")
