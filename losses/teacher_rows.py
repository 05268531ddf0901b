"""Where the teacher's side of a chunked per-token loss comes from (`losses.chunked`): its logits, its final hidden
states with its LM head (each chunk's logits computed on demand, under no_grad), or its stored top-k
log-probabilities (an offline cache). Each source gives a chunk's rows for the positions asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "TeacherHead",
    "TeacherLogits",
    "TeacherSource",
    "TeacherTopK",
    "TopKRows",
    "as_teacher",
    "check_head",
]


@dataclass
class TopKRows:
    """A chunk of the teacher's stored distribution: the top-k log-probabilities `logprobs (c, k)` of the vocabulary
    entries `indices (c, k)` (long), `tail (c,)`, the log of the probability of all other entries (-inf when k is
    the whole vocabulary), and the teacher's `vocab_size`."""

    logprobs: torch.Tensor
    indices: torch.Tensor
    tail: torch.Tensor
    vocab_size: int


# -- sources --------------------------------------------------------------------------------------------------


class TeacherSource(Protocol):
    """Where each chunk's teacher rows come from: `rows(index, dtype)` for the positions `index` (one index tensor
    per leading dim), in the compute dtype, never with gradient; `describes` names it in errors."""

    describes: str

    @property
    def leading_shape(self) -> torch.Size: ...

    @property
    def vocab_size(self) -> int | None: ...

    def rows(self, index: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor | TopKRows: ...


class TeacherLogits:
    """The teacher's logits `(..., V')`, detached."""

    describes = "teacher logits"

    def __init__(self, logits: torch.Tensor) -> None:
        if logits.dim() < 2:
            raise ValueError(f"teacher logits must have a trailing vocabulary dim, got {tuple(logits.shape)}")
        self.logits = logits.detach()

    @property
    def leading_shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    @property
    def vocab_size(self) -> int:
        return self.logits.shape[-1]

    def rows(self, index: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.logits[index].to(dtype)


class TeacherHead:
    """The teacher's final hidden states `(..., H')` and LM head (`weight (V', H')`, `bias (V',)` or None): each
    chunk's logits are computed when asked for, under no_grad, in the weight's dtype (as the head would)."""

    describes = "teacher hidden states"

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        check_head(hidden, weight, bias, "teacher")
        self.hidden, self.weight = hidden.detach(), weight.detach()
        self.bias = None if bias is None else bias.detach()

    @property
    def leading_shape(self) -> torch.Size:
        return self.hidden.shape[:-1]

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def rows(self, index: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
        with torch.no_grad():
            return F.linear(self.hidden[index].to(self.weight.dtype), self.weight, self.bias).to(dtype)


class TeacherTopK:
    """The teacher's stored top-k log-probabilities `(..., k)`, their vocabulary `indices (..., k)` and `tail (...)`,
    the log of the remaining probability (see `TopKRows`); `vocab_size` is the teacher's full vocabulary."""

    describes = "teacher top-k log-probabilities"

    def __init__(self, logprobs: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, vocab_size: int) -> None:
        if logprobs.shape != indices.shape or tail.shape != logprobs.shape[:-1]:
            raise ValueError(
                f"top-k logprobs {tuple(logprobs.shape)}, indices {tuple(indices.shape)} and tail {tuple(tail.shape)} "
                "must be (..., k), (..., k) and (...)"
            )
        self.logprobs, self.indices, self.tail, self._vocab = logprobs, indices, tail, vocab_size

    @property
    def exact(self) -> bool:
        """Whether every vocabulary entry is kept (k = V): the stored distribution is then the teacher's own."""
        return self.logprobs.shape[-1] >= self._vocab

    @property
    def leading_shape(self) -> torch.Size:
        return self.logprobs.shape[:-1]

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def rows(self, index: tuple[torch.Tensor, ...], dtype: torch.dtype) -> TopKRows:
        logprobs, tail = self.logprobs[index].to(dtype), self.tail[index].to(dtype)
        return TopKRows(logprobs, self.indices[index].long(), tail, self._vocab)


def as_teacher(teacher: torch.Tensor | TeacherSource) -> TeacherSource:
    """A teacher source: logits given as a tensor are wrapped in `TeacherLogits`."""
    return TeacherLogits(teacher) if isinstance(teacher, torch.Tensor) else teacher


def check_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, side: str) -> None:
    """Refuse a head that does not map `hidden (..., H)` to a vocabulary: weight (V, H), bias (V,) or None."""
    if weight.dim() != 2 or hidden.dim() < 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{side} lm_head_weight {tuple(weight.shape)} must be (V, H) with H = hidden {tuple(hidden.shape)}[-1]"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{side} lm_head_bias {tuple(bias.shape)} must be (V,) = ({weight.shape[0]},)")
