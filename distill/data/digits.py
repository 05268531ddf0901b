"""The 8x8 handwritten digits bundled with scikit-learn: real data that needs no download."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torchvision.transforms import v2

from distill.data.base import (
    DATASETS,
    ClassificationDataModule,
    Splits,
    TensorImageDataset,
    check_at_least,
    check_fraction,
)
from distill.errors import DistillError

NUM_CLASSES = 10
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@functools.lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as float32 `[N, 1, 8, 8]` scaled to [0, 1], and int64 labels `[N]` (read-only)."""
    from sklearn.datasets import load_digits  # imported here: sklearn is slow to import

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, shuffled `(train, val, test)` index arrays; the same seed gives the same split."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return train, val, test


@DATASETS.register("digits")
class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), as `[1, 8, 8]` normalized tensors.

    Args:
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        split_seed: Seed of the fixed, stratified train/val/test split.
        val_fraction: Fraction of all images held out for validation.
        test_fraction: Fraction of all images held out for testing.
        train_samples: Use only the first N images of the shuffled training split (None: all of them).
        augment: Shift training images randomly by up to 1 pixel.
        shots: Train on this many images per class only, drawn by `shot_seed` (None: the whole training split).
        shot_seed: Seed of the few-shot draw.
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        train_samples: int | None = None,
        augment: bool = False,
        shots: int | None = None,
        shot_seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, shots=shots, shot_seed=shot_seed)
        check_fraction("val_fraction", val_fraction)
        check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise DistillError(
                f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction} + {test_fraction}"
            )
        self.num_classes = NUM_CLASSES
        self.class_names = CLASS_NAMES
        self.in_chans = 1
        self.image_size = 8
        self.split_seed = split_seed
        self.augment = augment
        # The split is cheap (1797 labels); making it here checks train_samples before training starts.
        _, labels = load_digits_arrays()
        train, self.val_indices, self.test_indices = split_indices(labels, val_fraction, test_fraction, split_seed)
        if train_samples is not None:
            check_at_least("train_samples", train_samples, NUM_CLASSES)
            if train_samples > len(train):
                raise DistillError(
                    f"data.train_samples must be <= {len(train)} (the size of the training split), got {train_samples}"
                )
            train = train[:train_samples]
        self.train_indices = train

    def build_datasets(self) -> Splits:
        images, labels = load_digits_arrays()
        train_images = torch.from_numpy(images[self.train_indices])
        # Statistics of the images actually trained on (a single scalar each: the images are grey). All images are
        # normalized once here rather than per sample: the per-sample transform was most of a CPU step's time.
        mean, std = train_images.mean().item(), train_images.std().item()
        normalized = (torch.from_numpy(images.copy()) - mean) / std  # a copy: the array is read-only
        eval_transform = None
        # The shifted-in border is background: 0 before normalizing.
        train_transform = v2.RandomCrop(8, padding=1, fill=(0.0 - mean) / std) if self.augment else None

        def subset(indices: np.ndarray, transform: v2.Transform | None) -> TensorImageDataset:
            return TensorImageDataset(normalized[indices], torch.from_numpy(labels[indices]), transform)

        return (
            subset(self.train_indices, train_transform),
            subset(self.val_indices, eval_transform),
            subset(self.test_indices, eval_transform),
        )
