"""Fault tolerance of a run: checkpoints written atomically (temporary file, then rename), a resume that skips an
unreadable checkpoint for the previous one, and a stop with a clear message at the first non-finite loss."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from distill.engine.run_folder import PREVIOUS, RunFolder
from distill.errors import DistillError
from distill.models.weights import atomic_save, read_checkpoint
from distill.tasks.step_log import is_logging_step


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file renamed into place: a run killed while saving
    leaves the previous checkpoint whole, never a half-written one.

    With `keep_previous` (a run's `last.ckpt`), the file at that path is kept as its `previous.ckpt` (a hard link:
    the new file replaces it by rename, so the old one lives on) before each save: if the new one is ever
    unreadable, a resume falls back to it. (Done here rather than by a callback: a callback costs host time at every
    hook of every step.)
    """

    def __init__(self, keep_previous: Path | None = None) -> None:
        super().__init__()
        self.keep_previous = keep_previous

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if self.keep_previous is not None:
            keep_previous(self.keep_previous)
        atomic_save(checkpoint, Path(path))


def keep_previous(last: Path) -> None:
    """Hard-link `last` (if it exists) as `previous.ckpt` beside it, replacing the one there."""
    if not last.is_file():
        return
    previous = last.with_name(PREVIOUS)
    temporary = previous.with_name(f".{previous.name}.tmp")
    temporary.unlink(missing_ok=True)
    os.link(last, temporary)
    os.replace(temporary, previous)


def readable_checkpoint(candidates: list[Path]) -> tuple[Path, list[str]]:
    """The first of `candidates` that exists and loads, and one line per checkpoint skipped on the way."""
    skipped = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            read_checkpoint(path, "--resume")
            return path, skipped
        except DistillError as exc:
            skipped.append(str(exc))
    reasons = "; ".join(skipped) or "none found"
    raise DistillError(f"--resume: no readable checkpoint in {candidates[0].parent} ({reasons})")


def not_finite(name: str, value: torch.Tensor) -> str:
    """`name = nan` for a scalar that is not finite, `name: K of N values` for a tensor with K such values, else ""."""
    if value.numel() == 1:
        return "" if math.isfinite(float(value)) else f"{name} = {float(value)}"
    count = int((~torch.isfinite(value)).sum())
    return f"{name}: {count} of {value.numel()} values" if count else ""


MAX_UNCHECKED = 1024  # steps whose verdicts an accelerator keeps before it reads them, if no logging step came


class StopOnNonFiniteLoss(Callback):
    """A NaN or infinite loss stops the run with a message naming the step and the loss terms that are not finite
    (from the task's `last_parts`, when it keeps them: scalar terms, or tensors that fed the loss, such as each
    model's logits, to show where the first non-finite value arose). The checkpoints already written stay as they
    are.

    On the CPU each step's loss is read before its backward pass (`every_step`), so the weights are never updated
    with it. On an accelerator reading the loss every step would make the host wait for the device each step: each
    step's verdict (one `isfinite`, kept on the device) is read with the others at Lightning's logging steps and
    before each checkpoint (validation's start, the epoch's end), so the message names the first bad step since the
    last check.

    Args:
        every_step: read each loss before its backward pass (None: on the CPU only).
    """

    def __init__(self, every_step: bool | None = None) -> None:
        self.every_step = every_step
        self.verdicts: list[torch.Tensor] = []  # on the device: isfinite(loss) of each step since the last check
        self.steps: list[int] = []  # their global steps

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        parts = module.__dict__.get("last_parts") or {}
        module.__dict__["last_parts"] = {}  # a task may keep large tensors there (logits): not beyond this step
        every_step = self.every_step if self.every_step is not None else loss.device.type == "cpu"
        if every_step:
            value = loss.item()  # one read; on the CPU it waits for nothing
            if not math.isfinite(value):
                self.stop(trainer, trainer.global_step, value, parts)
            return
        self.verdicts.append(torch.isfinite(loss))  # one operation, no copy to the host
        self.steps.append(trainer.global_step)
        if len(self.verdicts) >= MAX_UNCHECKED or is_logging_step(trainer):  # where the task reads its logs anyway
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check(trainer)  # before the validation whose end saves a checkpoint

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check(trainer)  # before the checkpoint of a run without validation

    def check(self, trainer: L.Trainer) -> None:
        """Stop if a step since the last check had a non-finite loss (one read of a device value)."""
        if not self.verdicts:
            return
        finite, steps = torch.stack(self.verdicts), self.steps
        self.verdicts, self.steps = [], []
        if not bool(finite.all()):
            first_bad = steps[int((~finite).nonzero()[0, 0])]
            self.stop(trainer, first_bad, float("nan"), {}, deferred=True)

    def stop(
        self, trainer: L.Trainer, step: int, loss: float, parts: dict[str, torch.Tensor], deferred: bool = False
    ) -> None:
        bad = [line for name, value in parts.items() if (line := not_finite(name, value.detach()))]
        terms = f" (not finite: {', '.join(bad)})" if bad else ""
        last = RunFolder(trainer.default_root_dir).last
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been written yet"
        what = (
            "the loss is not finite (found at the next check; the weights since are not saved)"
            if deferred
            else f"the loss is {loss}{terms}; stopped before updating the weights"
        )
        raise DistillError(f"training step {step} (epoch {trainer.current_epoch}): {what}; {kept}")
