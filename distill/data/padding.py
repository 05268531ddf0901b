"""How far a batch of token rows is padded: to the row length always (`data.padding: max_length`), or to its
longest row (`longest`), rounded up to `data.pad_to_multiple_of` so that kernels see few distinct shapes.

Rows are stored right-padded to the row length; `longest` cuts a collated batch's columns after its longest row,
separately on each side (the teacher's rows of its own tokenizer have their own length). Only padding is cut, and a
row keeps its positions, so whatever is keyed per (row, position), such as the teacher cache, reads the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import default_collate

from distill.errors import DistillError

Padding = Literal["max_length", "longest"]
PADDINGS = ("max_length", "longest")
ROW_KEYS = ("input_ids", "attention_mask", "labels", "position_ids")
SIDES = ("", "teacher_")


def check_padding(padding: str, multiple: int) -> None:
    if padding not in PADDINGS:
        raise DistillError(f"data.padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if multiple < 1:
        raise DistillError(f"data.pad_to_multiple_of must be >= 1, got {multiple}")


def padded_width(mask: torch.Tensor, multiple: int) -> int:
    """The columns a right-padded batch with attention mask `mask [B, T]` needs: its longest row, rounded up to
    `multiple`, at most T."""
    filled = mask.any(dim=0).nonzero()
    longest = int(filled[-1]) + 1 if len(filled) else 1
    return min(mask.shape[1], -(-longest // multiple) * multiple)


@dataclass(frozen=True)
class PadToLongest:
    """A DataLoader `collate_fn`: the default collation, then each side's row tensors cut to `padded_width`."""

    multiple: int = 8

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        batch = default_collate(items)
        for side in SIDES:
            mask = batch.get(f"{side}attention_mask")
            if mask is None:
                continue
            width = padded_width(mask, self.multiple)
            for key in ROW_KEYS:
                if f"{side}{key}" in batch:
                    batch[f"{side}{key}"] = batch[f"{side}{key}"][:, :width]
        return batch
