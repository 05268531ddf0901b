"""Run folders and the Trainer a run uses."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
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
    try:
        run_dir.mkdir()
    except OSError as exc:
        raise DistillError(f"run.root: cannot create run folder {run_dir}: {exc.strerror}") from None
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
    """The checkpoint to resume from: last.ckpt, or when it cannot be read, the previous one kept beside it."""
    from distill.faults import PREVIOUS_CHECKPOINT, readable_checkpoint

    folder = run_dir / CHECKPOINT_DIR
    path = folder / "last.ckpt"
    if not path.is_file():
        raise DistillError(f"--resume: {run_dir} has no checkpoint to resume from ({path} is missing)")
    chosen, skipped = readable_checkpoint([path, folder / PREVIOUS_CHECKPOINT])
    for reason in skipped:
        print(f"warning: {reason}; resuming from {chosen} instead")
    return chosen


def log_version(run_dir: Path) -> str:
    """`logs` for a run's first session; `logs/resume_K` for the K-th resumed one, so no session's log is lost."""
    if not (run_dir / "logs").exists():
        return "logs"
    return f"logs/resume_{len(list((run_dir / 'logs').glob('resume_*'))) + 1}"


def loggers(run_dir: Path) -> list[Logger]:
    version = log_version(run_dir)
    found: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version=version)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        found.append(TensorBoardLogger(save_dir=run_dir / "tensorboard", name="", version=version))
    return found


def progress_bar(enabled: bool) -> list[Callback]:
    if enabled and importlib.util.find_spec("rich"):
        from lightning.pytorch.callbacks import RichProgressBar

        return [RichProgressBar(leave=True)]
    return []


def make_trainer(
    trainer_args: dict[str, Any],
    run_dir: Path,
    monitor: tuple[str, str] = ("val/acc", "max"),
    callbacks: list[Callback] = (),
) -> L.Trainer:
    """A Lightning Trainer with the recipe's arguments, writing checkpoints `last` and `best` to the run folder."""
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename="best",
        monitor=monitor[0],
        mode=monitor[1],
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    from distill.faults import AtomicCheckpointIO, KeepPrevious, StopOnNonFiniteLoss

    args = dict(trainer_args)
    safety = [KeepPrevious(run_dir / CHECKPOINT_DIR), StopOnNonFiniteLoss()]
    own = [checkpoint, *safety, *progress_bar(args.get("enable_progress_bar", True)), *callbacks]
    try:
        return L.Trainer(
            **args, default_root_dir=run_dir, logger=loggers(run_dir), callbacks=own, plugins=[AtomicCheckpointIO()]
        )
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as exc:  # unknown or unusable strategy
        raise DistillError(f"trainer: {str(exc).strip().splitlines()[0]}") from None
