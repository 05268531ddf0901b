"""Run folders and the Trainer a run uses."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from distill.config.schema import FSDPSettings
from distill.engine.quiet import held_back_info
from distill.errors import DistillError

RECIPE_FILE = "recipe.yaml"
CHECKPOINT_DIR = "checkpoints"
RUN_DIR_ENV = "DISTILL_RUN_DIR"  # tells the processes started for the other ranks which run folder is theirs


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


def external_launch() -> tuple[int, str] | None:
    """(global rank, job name) when torchrun or SLURM started this process as one of several of a run (each runs
    `distill fit` itself), else None. All of them agree on the job name without talking to each other."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in env:
        if env["TORCHELASTIC_RUN_ID"] in ("", "none"):
            raise DistillError(
                "torchrun: give the run an id (--rdzv-id ID, or --standalone on one node): the processes name their "
                "shared run folder after it"
            )
        return int(env["RANK"]), f"torchrun_{env['TORCHELASTIC_RUN_ID']}"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        step = env.get("SLURM_STEP_ID", "0")
        return int(env["SLURM_PROCID"]), f"slurm_{env['SLURM_JOB_ID']}.{step}"
    return None


def shared_run_dir(root: str, name: str, job: str, rank: int) -> Path:
    """The run folder `root/name/<job>` of an externally launched run: made by rank 0, and refused when an earlier
    run already wrote to it (ranks > 0 write nothing there)."""
    run_dir = Path(root).expanduser() / name / job
    if rank > 0:
        return run_dir
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise DistillError(f"run folder {run_dir} already holds a run of job {job}: resume it with --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillError(f"run.root: cannot create run folder {run_dir}: {exc.strerror}") from None
    return run_dir


def run_folder(root: str, name: str, resume: Path | None) -> tuple[Path, bool, Path | None]:
    """(the run's folder, whether this process made it just now, the folder when Lightning's launcher started this
    process for a rank > 0)."""
    inherited = launched_run_dir()  # a process Lightning started for another rank of a run: that run's folder
    if resume is not None or inherited is not None:
        return resume or inherited, False, inherited
    launch = external_launch()
    if launch is not None:  # torchrun or SLURM started every rank: one folder named after the job
        rank, job = launch
        return shared_run_dir(root, name, job, rank), rank == 0, None
    return new_run_dir(root, name), True, None


def launched_run_dir() -> Path | None:
    """In a process that Lightning's launcher started for rank > 0 of a run, the folder rank 0 made for it."""
    path = os.environ.get(RUN_DIR_ENV)
    return Path(path) if path and int(os.environ.get("LOCAL_RANK", "0")) > 0 else None


def latest_run_dir(root: str, name: str) -> Path:
    parent = Path(root).expanduser() / name
    runs = [p for p in parent.glob("*") if (p / RECIPE_FILE).is_file()]  # version_N, or torchrun_/slurm_ job folders
    if not runs:
        raise DistillError(f"--resume: no earlier run of '{name}' under {parent}")
    return max(runs, key=lambda p: (p / RECIPE_FILE).stat().st_mtime_ns)


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to resume from: last.ckpt, or when it cannot be read, the previous one kept beside it."""
    from distill.engine.faults import PREVIOUS_CHECKPOINT, readable_checkpoint

    folder = run_dir / CHECKPOINT_DIR
    path = folder / "last.ckpt"
    if not path.is_file():
        raise DistillError(f"--resume: {run_dir} has no checkpoint to resume from ({path} is missing)")
    chosen, skipped = readable_checkpoint([path, folder / PREVIOUS_CHECKPOINT])
    for reason in skipped:
        print(f"warning: {reason}; resuming from {chosen} instead")
    return chosen


def is_global_zero() -> bool:
    """False in the processes of ranks > 0 of a distributed run (Lightning records each process's rank)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


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


def with_strategy(trainer_args: dict[str, Any], fsdp: FSDPSettings | None = None) -> dict[str, Any]:
    """The recipe's trainer arguments, with `strategy: fsdp` made distill's sharded strategy (engine.fsdp)."""
    if trainer_args.get("strategy") != "fsdp":
        return dict(trainer_args)
    from distill.engine.fsdp import ShardedDistillation

    return {**trainer_args, "strategy": ShardedDistillation(frozen=(fsdp or FSDPSettings()).frozen)}


def make_trainer(
    trainer_args: dict[str, Any],
    run_dir: Path,
    monitor: tuple[str, str] = ("val/acc", "max"),
    callbacks: list[Callback] = (),
    fsdp: FSDPSettings | None = None,
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
    from distill.engine.faults import AtomicCheckpointIO, KeepPrevious, StopOnNonFiniteLoss

    args = with_strategy(trainer_args, fsdp)
    safety = [KeepPrevious(run_dir / CHECKPOINT_DIR), StopOnNonFiniteLoss()]
    own = [checkpoint, *safety, *progress_bar(args.get("enable_progress_bar", True)), *callbacks]
    with held_back_info() as device_info:
        trainer = build_trainer(
            **args, default_root_dir=run_dir, logger=loggers(run_dir), callbacks=own, plugins=[AtomicCheckpointIO()]
        )
    trainer.device_info = device_info  # printed (distill.quiet.release) once the run's inputs have all been checked
    return trainer


def build_trainer(**args: Any) -> L.Trainer:
    """`L.Trainer(**args)`, with settings it cannot use (an unknown strategy, DeepSpeed off CUDA...) answered in one
    line. distill's loaders shard the data themselves (distill.data.sharding), so Lightning's sampler is off."""
    try:
        trainer = L.Trainer(**args, use_distributed_sampler=False)
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as exc:  # unknown or unusable strategy
        raise DistillError(f"trainer: {str(exc).strip().splitlines()[0]}") from None
    check_accelerator_fits(trainer)
    return trainer


def check_accelerator_fits(trainer: L.Trainer) -> None:
    """Refuse now what Lightning would refuse only once training starts (with a traceback, after the run folder was
    written): DeepSpeed off CUDA."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy) and not isinstance(trainer.accelerator, CUDAAccelerator):
        accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
        raise DistillError(
            f"trainer: DeepSpeed runs on CUDA GPUs only, and the accelerator is {accelerator}; use ddp or fsdp here"
        )
