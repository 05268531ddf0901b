"""Image sets kept whole, as uint8, on the accelerator: loaders yield sample indices, and the batch of images is
gathered, augmented (replayably) and normalized on the device after the transfer. No CPU decoding or per-sample
transforms: the data loader stops being the bottleneck of small-image training."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from distill.data.replay_augment import CropFlip


class IndexedImages(Dataset):
    """uint8 images `[N, C, H, W]` and labels `[N]`; a sample is `(index, label)`, its image stays here.

    `on(device)` gives the images on a device (moved once, then kept)."""

    draws_random = False  # reading a sample is a lookup: the train loader need not seed per sample

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError(f"need uint8 images and one label each, got {images.dtype}, {len(images)}/{len(labels)}")
        self.images, self.labels = images, labels
        self.label_ints: list[int] = labels.tolist()  # read per sample with no tensor operation (two per sample)
        self._on: dict[str, torch.Tensor] = {}
        self._epoch_params: tuple[tuple, torch.Tensor] | None = None  # ((augment, seed, epoch, device), params)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, self.label_ints[index]

    def epoch_params(self, augment: CropFlip, seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """`augment.params(seed, epoch, indices)`, read from the parameters of every sample of this set, which are
        made once per epoch: a batch's are then one lookup rather than some thirty integer operations."""
        key = (augment, seed, epoch, indices.device)
        if self._epoch_params is None or self._epoch_params[0] != key:
            every = torch.arange(len(self), device=indices.device)
            self._epoch_params = key, augment.params(seed, epoch, every)
        return self._epoch_params[1][indices]

    def on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._on:
            self._on[key] = self.images.to(device)
        return self._on[key]


def source_of(dataset: Dataset) -> IndexedImages:
    """The IndexedImages under a dataset (itself, or the one a few-shot Subset wraps)."""
    return dataset if isinstance(dataset, IndexedImages) else dataset.dataset  # type: ignore[attr-defined]


def device_batch(
    images: IndexedImages,
    indices: torch.Tensor,
    augment: CropFlip,
    train: bool,
    seed: int,
    epoch: int,
    channels_last: bool = False,
) -> torch.Tensor:
    """The normalized images of `indices` (on the indices' device): augmented views of `epoch` when `train`."""
    batch = images.on(indices.device)[indices]
    x = augment.apply(batch, images.epoch_params(augment, seed, epoch, indices)) if train else augment.normalize(batch)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
