"""Where a run writes: a new `runs/<name>/version_N` folder, the shared folder of a torchrun/SLURM job, or the
folder of a run being resumed; and the checkpoint a resume starts from."""

from __future__ import annotations

import os
import re
from pathlib import Path

from distill.engine.run_folder import RunFolder
from distill.errors import DistillError

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
    runs = [RunFolder(p) for p in parent.glob("*")]
    runs = [run for run in runs if run.recipe_file.is_file()]  # version_N, or torchrun_/slurm_ job folders
    if not runs:
        raise DistillError(f"--resume: no earlier run of '{name}' under {parent}")
    return max(runs, key=lambda run: run.recipe_file.stat().st_mtime_ns).path


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to resume from: last.ckpt, or when it cannot be read, the previous one kept beside it."""
    from distill.engine.faults import readable_checkpoint

    run = RunFolder(run_dir)
    if not run.last.is_file():
        raise DistillError(f"--resume: {run_dir} has no checkpoint to resume from ({run.last} is missing)")
    chosen, skipped = readable_checkpoint([run.last, run.previous])
    for reason in skipped:
        print(f"warning: {reason}; resuming from {chosen} instead")
    return chosen


def is_global_zero() -> bool:
    """False in the processes of ranks > 0 of a distributed run (Lightning records each process's rank)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0
