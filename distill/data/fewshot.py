"""Few-shot training sets: k images per class drawn by seed (AMU and the other few-shot CLIP methods train on
1/2/4/8/16 shots per class and evaluate on the full validation set)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from distill.errors import DistillError


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """The labels of a dataset without loading its images: `.targets` (torchvision) or `.labels` (ours)."""
    for attribute in ("targets", "labels"):
        if hasattr(dataset, attribute):
            return torch.as_tensor(getattr(dataset, attribute), dtype=torch.long)
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    raise DistillError(f"data.shots: cannot read the labels of a {type(dataset).__name__} without loading it")


def few_shot_indices(labels: torch.Tensor, shots: int, seed: int, num_classes: int) -> torch.Tensor:
    """Sorted indices of `shots` samples of every class, drawn without replacement by `seed`.

    The draw of each class depends only on the seed and that class's samples, so adding shots keeps the earlier
    ones (the 1-shot set is inside the 2-shot set, and so on)."""
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) < shots:
            raise DistillError(f"data.shots: class {c} has {len(members)} training samples, fewer than {shots}")
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed * 100_003 + c))
        chosen.append(members[order[:shots]])
    return torch.cat(chosen).sort().values


def few_shot(dataset: Dataset, shots: int, seed: int, num_classes: int) -> Subset:
    """`shots` samples of every class of `dataset`, as a Subset that keeps `.labels` readable."""
    labels = dataset_labels(dataset)
    indices = few_shot_indices(labels, shots, seed, num_classes)
    subset = Subset(dataset, indices.tolist())
    subset.labels = labels[indices]  # type: ignore[attr-defined]
    return subset
