"""Run folders, the Trainer a run uses, and per-epoch seeding for exact resume."""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from distill.errors import DistillError

RECIPE_FILE = "recipe.yaml"
CHECKPOINT_DIR = "checkpoints"


def new_run_dir(root: str, name: str) -> Path:
    """A fresh `root/name/version_N` folder: earlier runs are never overwritten."""
    parent = Path(root).expanduser() / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillError(f"run.root: cannot create run folder {parent}: {exc.strerror}") from None
    versions = [int(m.group(1)) for p in parent.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    run_dir = parent / f"version_{max(versions, default=-1) + 1}"
    run_dir.mkdir()
    return run_dir


def latest_run_dir(root: str, name: str) -> Path:
    parent = Path(root).expanduser() / name
    versions = sorted(
        (int(m.group(1)), p) for p in parent.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
    )
    if not versions:
        raise DistillError(f"--resume: no earlier run of '{name}' under {parent}")
    return versions[-1][1]


def last_checkpoint(run_dir: Path) -> Path:
    path = run_dir / CHECKPOINT_DIR / "last.ckpt"
    if not path.is_file():
        raise DistillError(f"--resume: {run_dir} has no checkpoint to resume from ({path} is missing)")
    return path


class EpochSeeding(Callback):
    """Reseed python, numpy and torch at the start of every training epoch from (seed, epoch).

    Shuffling, augmentation and dropout then depend only on the seed and the epoch, so a run resumed from
    an epoch-end checkpoint continues exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch_seed = (self.seed * 1_000_003 + trainer.current_epoch) % 2**32
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)


def loggers(run_dir: Path) -> list[Logger]:
    found: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="logs")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        found.append(TensorBoardLogger(save_dir=run_dir, name="", version="tensorboard"))
    return found


def progress_bar(enabled: bool) -> list[Callback]:
    if enabled and importlib.util.find_spec("rich"):
        from lightning.pytorch.callbacks import RichProgressBar

        return [RichProgressBar(leave=True)]
    return []


def make_trainer(
    trainer_args: dict[str, Any], run_dir: Path, seed: int, monitor: str = "val/acc", callbacks: list[Callback] = ()
) -> L.Trainer:
    """A Lightning Trainer with the recipe's arguments, writing checkpoints `last` and `best` to the run folder."""
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    args = dict(trainer_args)
    own = [checkpoint, EpochSeeding(seed), *progress_bar(args.get("enable_progress_bar", True)), *callbacks]
    try:
        return L.Trainer(**args, default_root_dir=run_dir, logger=loggers(run_dir), callbacks=own)
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. an unknown strategy or accelerator
        raise DistillError(f"trainer: {str(exc).strip().splitlines()[0]}") from None
