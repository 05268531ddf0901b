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

from distill.engine.run_folder import RunFolder
from distill.errors import DistillError
from distill.models.weights import atomic_save, read_checkpoint
from distill.tasks.step_log import is_logging_step


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file renamed into place: a run killed while saving
    leaves the previous checkpoint whole, never a half-written one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, Path(path))


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


class KeepPrevious(Callback):
    """Before each checkpoint save, keep the current last.ckpt as previous.ckpt, a hard link (checkpoints are
    replaced by rename, so the old file lives on): if the new one is ever unreadable, a resume falls back to it."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero and self.run.last.is_file():
            temporary = self.run.previous.with_name(f".{self.run.previous.name}.tmp")
            temporary.unlink(missing_ok=True)
            os.link(self.run.last, temporary)
            os.replace(temporary, self.run.previous)


def not_finite(name: str, value: torch.Tensor) -> str:
    """`name = nan` for a scalar that is not finite, `name: K of N values` for a tensor with K such values, else ""."""
    if value.numel() == 1:
        return "" if math.isfinite(float(value)) else f"{name} = {float(value)}"
    count = int((~torch.isfinite(value)).sum())
    return f"{name}: {count} of {value.numel()} values" if count else ""


class StopOnNonFiniteLoss(Callback):
    """A NaN or infinite loss stops the run with a message naming the step and the loss terms that are not finite
    (from the task's `last_parts`, when it keeps them: scalar terms, or tensors that fed the loss, such as each
    model's logits, to show where the first non-finite value arose). The checkpoints already written stay as they
    are.

    On the CPU each step's loss is checked before its backward pass, so the weights are never updated with it. On an
    accelerator reading the loss every step would make the host wait for the device each step: the steps' verdicts
    are kept on the device and read at Lightning's logging steps and before each checkpoint (validation's start,
    the epoch's end), so the message names the first bad step since the last check.
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None  # on the device: the first step with a non-finite loss, or -1

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        parts = getattr(module, "last_parts", None) or {}
        module.__dict__["last_parts"] = {}  # a task may keep large tensors there (logits): not beyond this step
        finite = torch.isfinite(loss.detach()).all()
        if loss.device.type == "cpu":
            if not bool(finite):
                self.stop(trainer, trainer.global_step, float(loss.detach()), parts)
            return
        step = torch.full((), trainer.global_step, device=loss.device)
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, device=loss.device)
        self.first_bad = torch.where(~finite & (self.first_bad < 0), step, self.first_bad)
        if is_logging_step(trainer):  # the steps at which the task reads its logged values anyway
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check(trainer)  # before the validation whose end saves a checkpoint

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.check(trainer)  # before the checkpoint of a run without validation

    def check(self, trainer: L.Trainer) -> None:
        """Stop if a step since the last check had a non-finite loss (one read of a device value)."""
        if self.first_bad is not None and (step := int(self.first_bad)) >= 0:
            self.stop(trainer, step, float("nan"), {}, deferred=True)

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
