"""The teacher's responses to the training prompts, generated once and kept for sequence-level KD
(`causal_lm.mode: sequence`): later runs with the same teacher, data and sampling read them instead of generating.

Three memory-mapped .npy files: `responses` (int32 `[rows, max_new_tokens]`), `lengths` (int32 `[rows]`) and
`filled` (which rows are written); `meta.json` holds what determines them, and a folder made for anything else is
refused in one line, as the teacher-output cache is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.teachers.output_cache import CacheFolder


class ResponseStore(CacheFolder):
    """Responses of up to `max_tokens` tokens for `rows` training rows."""

    def __init__(self, folder: str | Path, meta: dict[str, Any], rows: int, max_tokens: int) -> None:
        super().__init__(folder, {**meta, "rows": rows, "max_tokens": max_tokens}, setting="causal_lm.responses")
        self.rows, self.max_tokens = rows, max_tokens
        self._arrays: tuple[np.ndarray, ...] | None = None

    def _files(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None:
            with self._locked():
                self._arrays = (
                    self._open("responses.npy", np.int32, (self.rows, self.max_tokens)),
                    self._open("lengths.npy", np.int32, (self.rows,)),
                    self._open("filled.npy", np.bool_, (self.rows,)),
                )
        return self._arrays

    def read(self, indices: torch.Tensor) -> list[list[int]] | None:
        """The responses of rows `indices`, or None unless all of them are stored."""
        responses, lengths, filled = self._files()
        rows = indices.detach().cpu().numpy()
        if not filled[rows].all():
            return None
        return [responses[row, : lengths[row]].tolist() for row in rows]

    def write(self, indices: torch.Tensor, found: list[list[int]]) -> None:
        responses, lengths, filled = self._files()
        for row, response in zip(indices.detach().cpu().tolist(), found, strict=True):
            kept = response[: self.max_tokens]
            responses[row, : len(kept)] = kept
            lengths[row] = len(kept)
            filled[row] = True

    def flush(self) -> None:
        for array in self._files():
            array.flush()
