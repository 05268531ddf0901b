"""A language-model teacher's outputs in a form that can be stored per token and reused: the top-k log-probabilities
with their vocabulary entries, and the few per-token numbers that keep the rest exact where it matters.

Per position, `StoredTopK` keeps:

- `logprobs (k)`, `indices (k)`: the k most likely next tokens and their log-probabilities (at temperature 1);
- `stats (5)`: `tail`, the log of the probability of all other entries (-inf at k = V), so that token divergences
  over the k + 1 buckets are exact at k = V and keep the remaining mass otherwise; `lse`, the log-sum-exp of the
  logits, and `logp_mean` and `logit_std`, the mean log-probability and the (unbiased) standard deviation of the
  logits over the vocabulary, so that GLD's top-k transforms (z-score, softmax, raw logits) are exact at any top_k
  up to k; `label_logp`, the log-probability of the position's label (the teacher's loss, exact at any k).

Bytes per token: `k * (4 + 4) + 5 * 4` (`bytes_per_token`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from losses.graph_on_logits import ZSCORE_EPS, Transform
from losses.teacher_rows import TeacherTopK

__all__ = ["STATS", "StoredTopK", "bytes_per_token"]

STATS = ("tail", "lse", "logp_mean", "logit_std", "label_logp")


def bytes_per_token(k: int) -> int:
    """Storage of one position: k float32 log-probabilities, k int32 indices and the float32 stats."""
    return k * (4 + 4) + len(STATS) * 4


@dataclass
class StoredTopK:
    """The teacher's stored outputs at positions `(...)`: `logprobs (..., k)` float32, `indices (..., k)` int,
    `stats (..., 5)` float32 (see the module docstring), over a vocabulary of `vocab_size`."""

    logprobs: torch.Tensor
    indices: torch.Tensor
    stats: torch.Tensor
    vocab_size: int

    @property
    def k(self) -> int:
        return self.logprobs.shape[-1]

    def stat(self, name: str) -> torch.Tensor:
        return self.stats[..., STATS.index(name)]

    def to(self, device: torch.device | str) -> StoredTopK:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return StoredTopK(move(self.logprobs), move(self.indices), move(self.stats), self.vocab_size)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int, labels: torch.Tensor | None = None) -> StoredTopK:
        """The stored form of `logits (..., V)` (fp32 math, no gradient); `labels (...)` give `label_logp` (entries
        that are not token ids, such as -100, get 0)."""
        with torch.no_grad():
            z = logits.float()
            lse = z.logsumexp(-1)  # (...)
            log_p = z - lse[..., None]
            values, indices = log_p.topk(min(k, z.shape[-1]), dim=-1)
            tail = log_p.scatter(-1, indices, -math.inf).logsumexp(-1)
            label_logp = torch.zeros_like(lse)
            if labels is not None:
                valid = (labels >= 0) & (labels < z.shape[-1])
                gathered = log_p.gather(-1, labels.clamp(0, z.shape[-1] - 1).long()[..., None])[..., 0]
                label_logp = torch.where(valid, gathered, 0.0)
            std = z.std(-1) if z.shape[-1] > 1 else torch.zeros_like(lse)
            stats = torch.stack([tail, lse, log_p.mean(-1), std, label_logp], dim=-1)
        return cls(values, indices.to(torch.int32), stats, z.shape[-1])

    @classmethod
    def from_head(
        cls,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        k: int,
        labels: torch.Tensor | None,
        chunk_size: int,
    ) -> StoredTopK:
        """`from_logits(hidden @ weight^T + bias)`, a chunk of positions at a time: the full logits never exist."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        flat_labels = None if labels is None else labels.reshape(-1)
        pieces = []
        with torch.no_grad():
            for start in range(0, max(flat.shape[0], 1), chunk_size):
                rows = F.linear(flat[start : start + chunk_size].to(weight.dtype), weight, bias)
                chunk_labels = None if flat_labels is None else flat_labels[start : start + chunk_size]
                pieces.append(cls.from_logits(rows, k, chunk_labels))
        leading = hidden.shape[:-1]
        return cls(
            torch.cat([p.logprobs for p in pieces]).reshape(*leading, -1),
            torch.cat([p.indices for p in pieces]).reshape(*leading, -1),
            torch.cat([p.stats for p in pieces]).reshape(*leading, len(STATS)),
            weight.shape[0],
        )

    def teacher(self) -> TeacherTopK:
        """The token-divergence teacher source (`losses.chunked.TeacherTopK`) of these outputs."""
        return TeacherTopK(self.logprobs, self.indices, self.stat("tail"), self.vocab_size)

    def kept(self, top_k: int, transform: Transform) -> tuple[torch.Tensor, torch.Tensor]:
        """GLD's kept `(values, indices)` (`losses.graph_on_logits.topk_transform`) for `top_k <= k`, from the stored
        numbers: equal to the transform of the logits themselves."""
        if top_k > self.k and self.k < self.vocab_size:
            raise ValueError(f"GLD top_k {top_k} is more than the {self.k} stored entries per token")
        logprobs, indices = self.logprobs[..., :top_k].float(), self.indices[..., :top_k].long()
        if transform == "zscore":
            return (logprobs - self.stat("logp_mean")[..., None]) / (
                self.stat("logit_std")[..., None] + ZSCORE_EPS
            ), indices
        if transform == "softmax":
            return logprobs.exp(), indices
        return logprobs + self.stat("lse")[..., None], indices
