"""The base LightningDataModule for image classification, and the dataset registry."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, get_worker_info

from distill.data.fewshot import few_shot
from distill.data.sharding import EvalShardBatches, SeededShardSampler
from distill.errors import DistillError
from distill.registry import Registry

Sample = tuple[torch.Tensor, int]
Splits = tuple[Dataset, Dataset, Dataset]
SampleKey = tuple[int, int, int]  # (seed, epoch, index): what a training sample's random augmentation depends on


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
        self.label_ints: list[int] = labels.tolist()  # read per sample with no tensor operation (two per sample)
        self.transform = transform

    @property
    def draws_random(self) -> bool:
        # without a transform a sample is read as it is: no RNG seeding per sample (SeededSamples)
        return self.transform is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.label_ints[index]


class WithIndices(Dataset):
    """`dataset`'s samples with their index appended: `(*sample, index)`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.draws_random = draws_random(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)


class SeededLoaders:
    """The loaders every datamodule here shares: a shuffled train loader whose order and augmentation depend only
    on (seed, epoch), and unshuffled val/test loaders. Needs `train_set`, `val_set`, `test_set`, `batch_size`,
    `num_workers`, `seed` and Lightning's `trainer` attribute."""

    yield_indices = False  # set by a task whose terms keep a memory per training sample (CRD)
    on_device = False  # on-device sets yield their indices anyway
    collate_fn: Callable[[list[Any]], Any] | None = None  # None: the default collation (token rows may pad less)

    def train_dataloader(self) -> DataLoader:
        # Each sample's augmentation is seeded from (seed, epoch, index): the workers live across epochs.
        return EpochSeededLoader(
            WithIndices(self.train_set) if self.yield_indices and not self.on_device else self.train_set,
            seed=self.seed,
            epoch_fn=self._trainer_epoch if self.trainer is not None else None,
            batch_size=self.batch_size,
            sampler=SeededShardSampler(self.train_set),
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate_fn,
        )

    def _trainer_epoch(self) -> int:
        # The epoch about to run; Lightning restores it from a checkpoint before it builds the train loader.
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=EvalShardBatches(len(dataset), self.batch_size),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
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
    can_hold_on_device = False  # whether `on_device` may be turned on (speed.fast_path)
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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed that depends only on (seed, epoch, index)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def seed_sample_rngs(seed: int) -> None:
    """Seed what per-sample transforms draw from: torch's CPU generator (torchvision), Python's and NumPy's RNGs.
    Only the CPU generator: `torch.manual_seed` would also reseed the accelerator's, and costs ~100x more."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed >> 32)  # NumPy takes 32 bits


@contextmanager
def kept_rngs() -> Iterator[None]:
    """Restore the global RNGs on exit, so that loading in the main process leaves the training step's stream alone."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


def draws_random(dataset: Dataset) -> bool:
    """Whether reading a sample of `dataset` may draw random numbers (a dataset says no by `draws_random = False`)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "draws_random", True)


class SeededSamples(Dataset):
    """`dataset` read by `(seed, epoch, index)` keys: the RNGs are seeded from them right before each sample is read,
    so its random augmentation depends on them only, not on the worker that reads it, how long that worker has run
    or what it read before. Workers therefore need no reseeding, and 0 or N workers give the same samples."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seeded = draws_random(dataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[SampleKey]) -> list[Any]:
        # The DataLoader reads a batch by one call: the main process keeps its RNG states once per batch.
        if not self.seeded:
            return [self.dataset[index] for _, _, index in keys]
        if get_worker_info() is not None:  # a worker's RNGs serve nothing else
            return self._read(keys)
        with kept_rngs():
            return self._read(keys)

    def _read(self, keys: list[SampleKey]) -> list[Any]:
        samples = []
        for seed, epoch, index in keys:
            seed_sample_rngs(sample_seed(seed, epoch, index))
            samples.append(self.dataset[index])
        return samples


class SampleKeys(Sampler[SampleKey]):
    """The indices of `sampler` as `(seed, epoch, index)` keys of the epoch the loader is about to run; the keys
    travel to the workers with the indices, so workers that live across epochs always know the epoch."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.seed = self.epoch = 0

    def __iter__(self) -> Iterator[SampleKey]:
        seed, epoch = self.seed, self.epoch
        return ((seed, epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class EpochSeededLoader(DataLoader):
    """A shuffled DataLoader whose order and random augmentation depend only on (seed, epoch).

    The order comes from `sampler` (a SeededShardSampler is given the epoch's seed); each sample is read with its
    RNGs seeded from (seed, epoch, index) (`SeededSamples`), so worker processes are kept across epochs
    (`persistent_workers`) and the number of workers does not change the samples. At each `iter()` the main
    process's RNGs are reseeded from (seed, epoch) too, for the randomness of the training step itself (dropout).
    The epoch comes from `epoch_fn` (the trainer's epoch counter, which a resumed run restores before it builds
    this loader), else from the number of `iter()` calls so far. A run resumed from an epoch-end checkpoint
    therefore sees exactly the batches the uninterrupted run saw.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        sampler: Sampler[int],
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("generator", torch.Generator())
        kwargs.setdefault("persistent_workers", kwargs.get("num_workers", 0) > 0)
        if isinstance(dataset, SeededSamples):  # Lightning rebuilding this loader from its attributes
            dataset = dataset.dataset
        self.keys = SampleKeys(sampler)
        super().__init__(SeededSamples(dataset), sampler=self.keys, **kwargs)
        self.seed = seed
        self.epoch_fn = epoch_fn
        self.iterations = 0

    def epoch_seed(self, epoch: int) -> int:
        """The seed of `epoch`'s order and of the main process's RNGs during it."""
        return (self.seed * 1_000_003 + epoch) % 2**32

    def __iter__(self) -> Any:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.iterations
        self.iterations += 1
        epoch_seed = self.epoch_seed(epoch)
        self.generator.manual_seed(epoch_seed)
        self.keys.seed, self.keys.epoch = self.seed, epoch
        if isinstance(self.keys.sampler, SeededShardSampler):
            self.keys.sampler.epoch_seed = epoch_seed
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        return super().__iter__()


DATASETS: Registry[type[ClassificationDataModule]] = Registry("dataset")
