"""A finished draft_distill run, loaded back: its target (the frozen teacher), the trained and a fresh draft, its
data and speculative settings; for benchmarks and notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from distill.config import from_dict
from distill.engine.runs import RECIPE_FILE
from distill.engine.wiring import build_datamodule
from distill.generate.speculative import prompts_from_rows
from distill.models import create_model
from distill.models.weights import extract_state_dict, read_checkpoint
from distill.teachers.resolve import resolve_teacher


@dataclass
class DraftRun:
    target: nn.Module
    trained: nn.Module
    untrained: nn.Module
    data: Any
    settings: Any  # the recipe's `speculative` section

    @property
    def eos_id(self) -> int | None:
        return getattr(getattr(self.data, "tokenizer", None), "eos_id", None)

    def prompts(self, count: int) -> list[dict]:
        """`count` held-out prompts: the first `prompt_tokens` tokens of validation rows."""
        return prompts_from_rows(self.data.val_set, count, self.settings.prompt_tokens)


def load_draft_run(run_dir: str | Path) -> DraftRun:
    run_dir = Path(run_dir)
    loaded = from_dict(yaml.safe_load((run_dir / RECIPE_FILE).read_text()), str(run_dir))
    data = build_datamodule(loaded.recipe.data)
    data.setup("fit")
    target, _ = resolve_teacher(loaded, data)
    target.eval()
    spec = {k: v for k, v in loaded.recipe.student.items() if k != "name"}
    untrained = create_model(loaded.recipe.student["name"], target=target, **spec).eval()
    trained = create_model(loaded.recipe.student["name"], target=target, **spec).eval()
    trained.load_state_dict(extract_state_dict(read_checkpoint(run_dir / "checkpoints" / "best.ckpt", "run")))
    return DraftRun(target, trained, untrained, data, loaded.recipe.speculative)
