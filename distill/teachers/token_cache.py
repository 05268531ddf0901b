"""Offline teacher outputs for language models: per row of token data, the teacher's stored top-k at every position
(`losses.stored_teacher.StoredTopK`), written once and read by every later run with the same teacher and data.

Each split's rows are kept in shards of `shard_rows` rows, four memory-mapped .npy files per shard: `logprobs`
(float32 `[rows, positions, k]`), `indices` (int32, same shape), `stats` (float32 `[rows, positions, 5]`) and
`filled` (which rows are written). `meta.json` holds what determines the outputs (the teacher's weights, the
tokenizers, the data and its packing, the precision); a cache whose meta differs from the run's is refused.

Positions are a row's own (rows are right-padded), so a batch padded only to its longest row (`data.padding:
longest`) reads and writes the first positions of each row: what lies beyond a batch's width is padding in every one
of its rows, never trained on, and is stored as zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import DistillError
from distill.teachers.output_cache import CacheFolder
from losses.stored_teacher import STATS, StoredTopK, bytes_per_token

SHARD_ROWS = 1024
FILES = ("logprobs", "indices", "stats", "filled")


class TokenTeacherCache(CacheFolder):
    """The teacher's stored top-k per (split, row, position).

    Args:
        folder: where the cache lives (created if missing).
        meta: what determines the teacher's outputs; must equal the stored meta of an existing cache.
        rows: rows per split, e.g. `{"train": 1200, "val": 130}`.
        positions: positions stored per row (the teacher's row length minus one: the positions that predict a token).
        vocab_size: the teacher's vocabulary V.
        top_k: entries kept per position (None or V: all of them, exact).
        shard_rows: rows per shard file.
    """

    def __init__(
        self,
        folder: str | Path,
        meta: dict[str, Any],
        rows: dict[str, int],
        positions: int,
        vocab_size: int,
        top_k: int | None,
        shard_rows: int = SHARD_ROWS,
    ) -> None:
        self.k = vocab_size if top_k is None else top_k
        if not 1 <= self.k <= vocab_size:
            raise DistillError(f"teacher.cache_top_k must be in [1, {vocab_size}] (the vocabulary), got {top_k}")
        self.rows, self.positions, self.vocab_size, self.shard_rows = dict(rows), positions, vocab_size, shard_rows
        layout = {"rows": self.rows, "positions": positions, "vocab_size": vocab_size, "top_k": self.k}
        super().__init__(folder, {**meta, **layout, "shard_rows": shard_rows, "format": "stored_topk_v1"})
        self._shards: dict[tuple[str, int], tuple[np.ndarray, ...]] = {}

    @property
    def bytes_per_token(self) -> int:
        return bytes_per_token(self.k)

    def total_bytes(self) -> int:
        return sum(self.rows.values()) * self.positions * self.bytes_per_token

    def _shard(self, split: str, shard: int) -> tuple[np.ndarray, ...]:
        key = (split, shard)
        if key not in self._shards:
            count = min(self.shard_rows, self.rows[split] - shard * self.shard_rows)
            shapes = {
                "logprobs": (np.float32, (count, self.positions, self.k)),
                "indices": (np.int32, (count, self.positions, self.k)),
                "stats": (np.float32, (count, self.positions, len(STATS))),
                "filled": (np.bool_, (count,)),
            }
            with self._locked():  # one process creates a shard's files, the others open them
                self._shards[key] = tuple(
                    self._open(f"{split}_{shard:05d}_{name}.npy", *shapes[name]) for name in FILES
                )
        return self._shards[key]

    def _groups(self, split: str, indices: torch.Tensor) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """`(shard, positions in the batch, rows within the shard)` for the batch's row indices."""
        if split not in self.rows:
            raise KeyError(f"no split {split!r} in this cache (has {sorted(self.rows)})")
        rows = indices.detach().cpu().numpy().astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows[split]):
            raise IndexError(f"row indices out of [0, {self.rows[split]}) for split {split!r}")
        shards = rows // self.shard_rows
        return [
            (int(shard), np.flatnonzero(shards == shard), rows[shards == shard] - shard * self.shard_rows)
            for shard in np.unique(shards)
        ]

    def read(self, split: str, indices: torch.Tensor, positions: int | None = None) -> StoredTopK | None:
        """The stored outputs of rows `indices` at their first `positions` positions (None: all) (`[B, positions,
        ...]`, CPU), or None unless all of them are stored."""
        groups = self._groups(split, indices)
        if not all(self._shard(split, shard)[3][local].all() for shard, _, local in groups):
            return None
        batch, width = len(indices), self._width(positions)
        logprobs = np.empty((batch, width, self.k), np.float32)
        index = np.empty((batch, width, self.k), np.int32)
        stats = np.empty((batch, width, len(STATS)), np.float32)
        for shard, where, local in groups:
            stored_logprobs, stored_index, stored_stats, _ = self._shard(split, shard)
            logprobs[where], index[where], stats[where] = (
                stored_logprobs[local, :width],
                stored_index[local, :width],
                stored_stats[local, :width],
            )
        return StoredTopK(torch.from_numpy(logprobs), torch.from_numpy(index), torch.from_numpy(stats), self.vocab_size)

    def write(self, split: str, indices: torch.Tensor, stored: StoredTopK) -> None:
        """Store the outputs `stored` (`[B, P, ...]`, P <= positions: a batch padded to its longest row) of rows
        `indices`; positions from P on are padding in all of them and stored as zeros."""
        width = stored.logprobs.shape[1]
        if width > self.positions or stored.logprobs.shape[2:] != (self.k,):
            raise ValueError(f"stored outputs {tuple(stored.logprobs.shape)} are not [B, <={self.positions}, {self.k}]")
        logprobs = stored.logprobs.detach().float().cpu().numpy()
        index = stored.indices.detach().to(torch.int32).cpu().numpy()
        stats = stored.stats.detach().float().cpu().numpy()
        for shard, where, local in self._groups(split, indices):
            files = self._shard(split, shard)
            for file, values in zip(files[:3], (logprobs, index, stats), strict=True):
                file[local, :width] = values[where]
                file[local, width:] = 0
            files[3][local] = True

    def _width(self, positions: int | None) -> int:
        if positions is None:
            return self.positions
        if not 0 <= positions <= self.positions:
            raise ValueError(f"positions must be in [0, {self.positions}], got {positions}")
        return positions

    def flush(self) -> None:
        for arrays in self._shards.values():
            for array in arrays:
                array.flush()

    def complete(self, split: str) -> bool:
        """Whether every row of `split` is stored (on disk)."""
        shards = -(-self.rows[split] // self.shard_rows)
        return all(
            (self.folder / f"{split}_{shard:05d}_filled.npy").is_file()
            and np.load(self.folder / f"{split}_{shard:05d}_filled.npy", mmap_mode="r").all()
            for shard in range(shards)
        )
