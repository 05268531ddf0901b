"""A finished draft_distill run, loaded back through the one run reader: its target (the frozen teacher), the trained
draft and the draft as it started, its data and speculative settings; and the accepted length of several draft
shapes measured along a run (`AcceptedLengths`); for benchmarks and notebooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn

from distill.engine.pipeline import restore
from distill.engine.run_folder import RunFolder
from distill.generate.speculative import evaluate_speculative, prompts_from_rows


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


def parse_shape(text: str) -> dict[str, int | None]:
    """A draft shape as benchmarks and notebooks name it: `D` (a chain of D tokens), `DxK` (a tree of D levels,
    top-k K, every node verified) or `DxKxN` (keeping its N best nodes) -> `{depth, top_k, total_tokens}`."""
    parts = [int(part) for part in text.split("x")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"a draft shape is D, DxK or DxKxN, got {text!r}")
    depth, top_k, total = (*parts, *[1, None][len(parts) - 1 :])[:3]
    return {"depth": depth, "top_k": top_k, "total_tokens": total}


class AcceptedLengths(Callback):
    """A draft_distill run's speculative decoding of its held-out prompts with several draft shapes, before training
    (epoch 0) and after each validation (epoch e: e epochs trained): `rows` of `{epoch, shape, accepted_length,
    speedup, lossless}`, one per shape and measurement, each also printed when `show` is set."""

    def __init__(self, shapes: list[str], show: bool = False) -> None:
        self.shapes = {shape: parse_shape(shape) for shape in shapes}
        self.show = show
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.measure(module, 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.measure(module, trainer.current_epoch + 1)

    def measure(self, module: L.LightningModule, epoch: int) -> None:
        prompts = module.held_out_prompts()
        if not prompts:
            return
        decoding = {k: v for k, v in module.decoding.items() if k not in ("depth", "top_k", "total_tokens")}
        for name, shape in self.shapes.items():
            report = evaluate_speculative(module.teacher, module.student, prompts, **decoding, **shape)
            row = {"epoch": epoch, "shape": name, "accepted_length": report.accepted_length}
            row |= {"speedup": report.speedup, "lossless": report.lossless}
            self.rows.append(row)
            if self.show:
                print(
                    f"epoch {epoch:>2}  {name:>8}  accepted length {report.accepted_length:6.3f}  "
                    f"speedup {report.speedup:5.2f}x  lossless {report.lossless:.0%}",
                    flush=True,
                )

    def curves(self) -> dict[str, tuple[list[int], list[float]]]:
        """`{shape: (epochs, accepted lengths)}`."""
        return {
            name: (
                [r["epoch"] for r in self.rows if r["shape"] == name],
                [r["accepted_length"] for r in self.rows if r["shape"] == name],
            )
            for name in self.shapes
        }
