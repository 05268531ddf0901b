"""A finished draft_distill run, loaded back through the one run reader: its target (the frozen teacher), the trained
draft and the draft as it started, its data and speculative settings; for benchmarks and notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from distill.engine.pipeline import restore
from distill.engine.run_folder import RunFolder
from distill.generate.speculative import prompts_from_rows


@dataclass
class DraftRun:
    target: nn.Module
    trained: nn.Module
    untrained: nn.Module  # the draft at its initialization (the run's seed)
    data: Any
    settings: Any  # the recipe's `speculative` section

    @property
    def eos_id(self) -> int | None:
        return self.data.tokenizer.eos_id

    def prompts(self, count: int) -> list[dict]:
        """`count` held-out prompts: the first `prompt_tokens` tokens of validation rows."""
        return prompts_from_rows(self.data.val_set, count, self.settings.prompt_tokens)


def load_draft_run(run_dir: str | Path) -> DraftRun:
    restored = restore(RunFolder(run_dir).checkpoint("best"), keep_initial=True)
    module = restored.module.eval()
    return DraftRun(module.teacher, module.student, restored.initial_student, restored.data, restored.loaded.settings)
