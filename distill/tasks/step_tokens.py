"""Token-level losses normalized by the tokens of the whole optimizer step.

A token loss is a mean over the tokens of the batch in hand. Under gradient accumulation (N micro-batches per step)
Lightning divides each micro-batch's loss by N, and under DDP/FSDP the gradients are averaged over the W ranks: a
token of a short micro-batch then weighs more than one of a long one, and the step's gradient is not that of the
single large batch. The fix is to weight micro-batch k by `tokens_k * N * W / T_step`, where `T_step` counts the
trained tokens of every micro-batch of every rank in the step: the step's gradient is then that of the sum over all
its tokens divided by their number, exactly as one process with the whole batch would compute it.

distill's training order is known before the epoch starts (`SeededShardSampler`: one permutation per epoch, the
ranks' k-th batches together are the k-th batch of a single process), so `T_step` is counted from the rows' labels
on every rank alike, with no communication and before any batch is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from distill.data.base import EpochSeededLoader, SeededSamples
from distill.data.sharding import SeededShardSampler

IGNORE = -100


@dataclass(frozen=True)
class StepTokens:
    """The trained tokens of each optimizer step of one epoch, over all micro-batches and ranks.

    Args:
        per_step: tokens of each step, in order.
        accumulate: micro-batches per step (Lightning divides each micro-batch's loss by it).
        world: processes whose gradients are averaged.
    """

    per_step: tuple[int, ...]
    mine: tuple[int, ...]  # this rank's tokens per micro-batch: checked against the batches that arrive
    accumulate: int
    world: int

    def scale(self, batch_idx: int, tokens: torch.Tensor) -> torch.Tensor | float:
        """The factor on micro-batch `batch_idx`'s token mean (over its `tokens`, a count) that makes its share of
        the step's gradient `sum / T_step`. Exactly 1.0 when one micro-batch on one process is the whole step."""
        if self.accumulate == 1 and self.world == 1:
            return 1.0
        return tokens * (self.accumulate * self.world / max(self.per_step[batch_idx // self.accumulate], 1))

    def check(self, first: int, batches: int, tokens: int) -> None:
        """That this rank's micro-batches `first..first+batches-1` held the `tokens` planned (once per epoch:
        counting per batch would wait for the accelerator at every step)."""
        planned = sum(self.mine[first : first + batches])
        if tokens != planned:
            raise RuntimeError(
                f"micro-batches {first}..{first + batches - 1} of the epoch held {tokens} trained tokens but its plan "
                f"had {planned}: the training loader does not deliver the seeded order it was planned from"
            )


def row_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Trained tokens per row `[N]` of unshifted labels `[N, T]`: the positions 1.. that are not IGNORE (position 0
    predicts nothing)."""
    return (labels[:, 1:] != IGNORE).sum(dim=1)


def plan_epoch(loader: DataLoader, epoch: int, accumulate: int, limit_batches: int | None = None) -> StepTokens | None:
    """The step token counts of `epoch` for a training loader of token rows in distill's seeded order; None when
    the loader is not one (its order or its rows' tokens cannot be known ahead).

    `limit_batches` caps the micro-batches per epoch (`trainer.limit_train_batches` as a count)."""
    if not isinstance(loader, EpochSeededLoader) or not isinstance(loader.keys.sampler, SeededShardSampler):
        return None
    dataset = loader.dataset.dataset if isinstance(loader.dataset, SeededSamples) else loader.dataset
    tensors = getattr(dataset, "tensors", None)
    if not isinstance(tensors, dict) or "labels" not in tensors:
        return None
    sampler: SeededShardSampler = loader.keys.sampler
    order = torch.tensor(sampler.global_order(loader.epoch_seed(epoch)))
    tokens = row_tokens(tensors["labels"])[order]
    world, batch = sampler.num_replicas, loader.batch_size
    micro_batches = len(loader) if limit_batches is None else min(len(loader), limit_batches)
    # rank r's k-th batch holds order positions r + W*j for j in [kB, kB + B): together, [kBW, (k+1)BW)
    per_batch = [int(tokens[k * batch * world : (k + 1) * batch * world].sum()) for k in range(micro_batches)]
    per_step = tuple(sum(per_batch[s : s + accumulate]) for s in range(0, micro_batches, accumulate))
    own = tokens[sampler.rank :: world]
    mine = tuple(int(own[k * batch : (k + 1) * batch].sum()) for k in range(micro_batches))
    return StepTokens(per_step, mine, accumulate, world)


class StepTokenWeights:
    """A task's per-epoch use of a `StepTokens` plan: planned at the epoch's start from the trainer's loader, each
    micro-batch's weight given as it trains (`scale`), and the tokens that arrived checked at the epoch's end."""

    def __init__(self) -> None:
        self.plan: StepTokens | None = None
        self.batches: list[int] = []
        self.tokens: torch.Tensor | None = None

    def start_epoch(self, trainer: Any, epoch: int, device: torch.device, enabled: bool = True) -> None:
        """Plan the epoch (nothing when not `enabled`: batches whose tokens are not known before the step)."""
        self.plan = None
        if enabled:
            batches = trainer.num_training_batches
            self.plan = plan_epoch(trainer.train_dataloader, epoch, trainer.accumulate_grad_batches, batches)
        self.batches, self.tokens = [], torch.zeros((), dtype=torch.long, device=device)

    def scale(self, batch_idx: int, tokens: torch.Tensor) -> torch.Tensor | float:
        """The weight of micro-batch `batch_idx`'s token mean (over `tokens`) in the optimizer step; 1 unplanned."""
        if self.plan is None:
            return 1.0
        self.batches.append(batch_idx)
        self.tokens = self.tokens + tokens
        return self.plan.scale(batch_idx, tokens)

    def end_epoch(self) -> None:
        if self.plan is not None and self.batches:  # a resumed epoch starts part-way
            self.plan.check(self.batches[0], len(self.batches), int(self.tokens))
