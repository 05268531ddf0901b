"""CIFAR's standard augmentation (random crop with zero padding, horizontal flip, normalization) done on whole
batches on any device, with parameters that are a pure function of (seed, epoch, sample index).

Because a sample's view depends on nothing else (not the batch it lands in, not the shuffling, not the device),
the view of sample i in epoch e can be made again at any time: that is what lets a teacher's output for it be
cached once and reused by later runs (distill/teacher_cache.py)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

MASK32 = 0xFFFFFFFF
MULTIPLIER = 0x45D9F3B


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors; products stay below 2^63."""
    x = x & MASK32
    x = ((x >> 16) ^ x) * MULTIPLIER & MASK32
    x = ((x >> 16) ^ x) * MULTIPLIER & MASK32
    return (x >> 16) ^ x


def mix32_int(x: int) -> int:
    """`mix32` of one Python integer: the same value, computed on the host."""
    x &= MASK32
    x = ((x >> 16) ^ x) * MULTIPLIER & MASK32
    x = ((x >> 16) ^ x) * MULTIPLIER & MASK32
    return (x >> 16) ^ x


def sample_hash(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """`[B]` int64 in [0, 2^32): one hash per (seed, epoch, index). The two keys are hashed on the host: a tensor
    made from host numbers on an accelerator is a copy that waits for the device's queue."""
    seed_key, epoch_key = mix32_int(seed * 2 + 1), mix32_int(epoch * 2 + 1)
    return mix32(mix32(indices.long() ^ seed_key) ^ epoch_key)


@functools.lru_cache(maxsize=64)
def device_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`, made once: a tensor made from host numbers at every step would be a copy
    that waits for the device's queue."""
    return torch.tensor(values, device=device)


@functools.lru_cache(maxsize=64)
def device_range(n: int, device: torch.device, reverse: bool = False) -> torch.Tensor:
    """`arange(n)` on `device` (descending with `reverse`), made once."""
    span = torch.arange(n, device=device)
    return span.flip(0) if reverse else span


@dataclass(frozen=True)
class CropFlip:
    """RandomCrop(size, padding) with zero fill + horizontal flip (p = 0.5) + normalization, replayable.

    `params(seed, epoch, indices)` gives `[B, 3]` int64 `(top, left, flip)`; `apply(images, params)` maps uint8
    `[B, C, H, W]` images (on any device) to normalized float32 `[B, C, size, size]`.
    """

    mean: tuple[float, ...]  # per channel, of the [0, 1]-scaled images (the dataset's constants)
    std: tuple[float, ...]
    size: int = 32
    padding: int = 4
    flip: bool = True

    def describe(self) -> dict:
        """What determines the views (for a cache's key)."""
        return {"augmentation": "crop_flip", **asdict(self)}

    def params(self, seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        h = sample_hash(seed, epoch, indices)
        span = 2 * self.padding + 1
        top, left = h % span, (h // span) % span
        flip = (h // (span * span)) % 2 if self.flip else torch.zeros_like(h)
        return torch.stack([top, left, flip], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        p, s, device = self.padding, self.size, images.device
        padded = F.pad(images, (p, p, p, p))  # zero fill, as torchvision's RandomCrop(padding=p)
        span = device_range(s, device)
        rows = (params[:, 0:1] + span)[:, :, None]  # (B, s, 1)
        # a flipped crop reads its columns right to left: the flip is part of the one gather, not a pass of its own
        columns = torch.where(params[:, 2:3].bool(), device_range(s, device, reverse=True), span)  # (B, s)
        cols = (params[:, 1:2] + columns)[:, None, :]  # (B, 1, s)
        batch = device_range(len(images), device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, s, s), channels_last
        return self.normalize(crops)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] -> `(x - mean) / std` per channel."""
        mean = device_values(self.mean, images.device).view(1, -1, 1, 1)
        std = device_values(self.std, images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std

    def view(self, images: torch.Tensor, seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """The augmented, normalized views of `images` (the samples `indices`) in `epoch`."""
        return self.apply(images, self.params(seed, epoch, indices.to(images.device)))
