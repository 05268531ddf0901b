"""A causal LM's outputs at the positions that predict a token: its full logits, or its final hidden states and LM
head, so that losses compute the logits a chunk of tokens at a time and no `[B, T, V]` tensor ever exists.

`chunk_blocker` says why a model's head cannot be chunked (a head that is not one linear layer, logits scaled or
soft-capped after it, a head sharded by FSDP); `run_lm` runs a model either way; `TeacherView` hands the teacher's
side of a batch to each kind of loss term, from its logits, its hidden states and head, or its stored top-k.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from distill.config.schema import setting
from distill.errors import DistillError
from losses.chunked import head_rows_map
from losses.graph_on_logits import Transform, topk_transform
from losses.stored_teacher import StoredTopK
from losses.teacher_rows import TeacherHead, TeacherLogits, TeacherSource

# config attributes of models whose logits are changed after the head (Gemma 2's soft-capping, Cohere's scale)
POST_HEAD_CONFIG = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


LogitsMode = Literal["auto", "chunked", "full"]


@dataclass
class HeadSettings:
    """The keys every language-model task section shares (`causal_lm:`, `align_distil:`, `speculative:`): how the
    logits are computed. A subclass names its section in `SECTION` (for the messages)."""

    SECTION: ClassVar[str] = ""
    logits: LogitsMode = setting(
        "auto",
        "chunked: the models' logits come from their final hidden states through their heads a chunk of tokens at a "
        "time (no [B, T, V] tensor); full: whole logits; auto: chunked where the models and terms allow it",
    )
    chunk_size: int | None = setting(
        None, "tokens per chunk of the heads; null: about 2^23 / V (one chunk's fp32 logits near 32 MiB)"
    )

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise DistillError(f"{self.SECTION}.chunk_size must be >= 1, got {self.chunk_size}")


def use_chunks(mode: LogitsMode, section: str, blockers: Iterable[str | None]) -> bool:
    """Whether logits are computed a chunk at a time: not with `full`; with `auto` unless something blocks it (the
    first reason in `blockers`, e.g. from `chunk_blocker`); with `chunked` always, a blocker raising a one-line
    DistillError naming `section`."""
    if mode == "full":
        return False
    reason = next(filter(None, blockers), None)
    if reason and mode == "chunked":
        raise DistillError(f"{section}.logits: chunked cannot run here: {reason}; use auto or full")
    return reason is None


def chunk_blocker(model: nn.Module) -> str | None:
    """Why `model`'s logits cannot be computed from its hidden states a chunk at a time, or None when they can."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        return "its output head is not one linear layer"
    if getattr(model, "base_model", model) is model:
        return "it has no backbone separate from its head (base_model)"
    config = getattr(model, "config", None)
    for name in POST_HEAD_CONFIG:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"its logits are changed after the head ({name}={value})"
    if isinstance(head.weight, DTensor):
        return "its head is sharded (FSDP)"
    return None


@dataclass
class LMOutputs:
    """One model's outputs at positions `[:, :-1]` (each predicts the next token): `logits (B, T-1, V)`, or
    `hidden (B, T-1, H)` with the `head` that makes logits of them."""

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    head: nn.Linear | None = None

    @property
    def chunked(self) -> bool:
        return self.logits is None

    @property
    def vocab_size(self) -> int:
        return self.head.weight.shape[0] if self.head is not None else self.logits.shape[-1]  # type: ignore[union-attr]

    def as_rows(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The student argument of `losses.chunked.chunk_sums`: the logits, or (hidden, weight, bias)."""
        if self.logits is not None:
            return self.logits
        assert self.hidden is not None and self.head is not None
        return self.hidden, self.head.weight, self.head.bias

    def kept(self, top_k: int, transform: Transform, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """GLD's kept `(values, indices)` of these outputs, with gradient; chunked from the head when there are no
        logits (each chunk checkpointed)."""
        if self.logits is not None:
            return topk_transform(self.logits, top_k, transform)
        assert self.hidden is not None and self.head is not None
        keep = lambda z: topk_transform(z, top_k, transform)  # noqa: E731
        return head_rows_map(keep, self.hidden, self.head.weight, self.head.bias, chunk_size)  # type: ignore[return-value]


def row_inputs(batch: dict[str, torch.Tensor], prefix: str = "") -> dict[str, Any]:
    """What a model reads of a batch's rows besides their ids (`prefix` 'teacher_' for the teacher's own tokens):
    the attention mask; for rows packed from several conversations the position ids instead, which restart at each
    one. Given position ids, no 2-D mask and no KV cache, transformers finds the packed sequences from the restarts
    and masks attention block-diagonally (`masking_utils.find_packed_sequence_indices`). A 2-D mask switches that off,
    and so does the cache a model makes for itself when `use_cache` is on (its config's default, even in training):
    each would let every token see the conversations before it, silently."""
    positions = batch.get(f"{prefix}position_ids")
    if positions is not None:
        return {"position_ids": positions, "use_cache": False}
    return {"attention_mask": batch[f"{prefix}attention_mask"]}


def run_lm(
    model: nn.Module,
    input_ids: torch.Tensor,
    rows: dict[str, Any],
    vision: dict[str, torch.Tensor],
    chunked: bool,
) -> LMOutputs:
    """`model` on a batch (`rows`: `row_inputs`), shifted to the predicting positions: its hidden states and head
    when `chunked` (the backbone runs, the head does not), else its logits."""
    if not chunked:
        logits = model(input_ids=input_ids, **rows, **vision).logits
        return LMOutputs(logits=logits[:, :-1])
    hidden = model.base_model(input_ids=input_ids, **rows, **vision).last_hidden_state
    return LMOutputs(hidden=hidden[:, :-1], head=model.get_output_embeddings())


@dataclass
class TeacherView:
    """The teacher's side of a batch: its outputs (`LMOutputs`, run under no_grad) or its stored top-k."""

    outputs: LMOutputs | None = None
    stored: StoredTopK | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        return None if self.outputs is None else self.outputs.logits

    def source(self) -> TeacherSource:
        """The teacher of a token divergence: stored top-k, hidden states with the head, or logits."""
        if self.stored is not None:
            return self.stored.teacher()
        assert self.outputs is not None
        if self.outputs.logits is not None:
            return TeacherLogits(self.outputs.logits)
        assert self.outputs.hidden is not None and self.outputs.head is not None
        return TeacherHead(self.outputs.hidden, self.outputs.head.weight, self.outputs.head.bias)

    def kept(self, top_k: int, transform: Transform, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """GLD's kept values of the teacher (no gradient)."""
        if self.stored is not None:
            return self.stored.kept(top_k, transform)
        assert self.outputs is not None
        with torch.no_grad():
            return self.outputs.kept(top_k, transform, chunk_size)

    def stored_form(self, top_k: int, labels: torch.Tensor, chunk_size: int) -> StoredTopK:
        """These outputs as the cache stores them (`StoredTopK`), computed a chunk at a time from the head."""
        assert self.outputs is not None
        if self.outputs.logits is not None:
            return StoredTopK.from_logits(self.outputs.logits, top_k, labels)
        assert self.outputs.hidden is not None and self.outputs.head is not None
        head = self.outputs.head
        return StoredTopK.from_head(self.outputs.hidden, head.weight, head.bias, top_k, labels, chunk_size)
