"""The loggers of a run: the CSV log in the run folder always, and TensorBoard, Weights & Biases and MLflow as the
recipe's `logger` section asks. A logger whose package is missing is a one-line error before anything runs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

from distill.config.schema import LoggerSettings
from distill.errors import DistillError


def log_version(run_dir: Path) -> str:
    """`logs` for a run's first session; `logs/resume_K` for the K-th resumed one, so no session's log is lost."""
    if not (run_dir / "logs").exists():
        return "logs"
    return f"logs/resume_{len(list((run_dir / 'logs').glob('resume_*'))) + 1}"


def run_loggers(run_dir: Path, settings: LoggerSettings | None = None, run_name: str | None = None) -> list[Logger]:
    """The run's loggers: CSV first (distill reads it back), then the others the settings name."""
    settings = settings or LoggerSettings()
    version = log_version(run_dir)
    name = run_name or run_dir.parent.name
    found: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version=version)]
    tensorboard = settings.tensorboard
    if tensorboard is None:
        tensorboard = _installed("tensorboard") or _installed("tensorboardX")
    if tensorboard:
        _require("tensorboard", "logger.tensorboard", alternative="tensorboardX")
        from lightning.pytorch.loggers import TensorBoardLogger

        found.append(TensorBoardLogger(save_dir=run_dir / "tensorboard", name="", version=version))
    if settings.wandb is not None:
        _require("wandb", "logger.wandb")
        from lightning.pytorch.loggers import WandbLogger

        wandb = settings.wandb
        found.append(
            WandbLogger(
                project=wandb.project,
                entity=wandb.entity,
                name=f"{name}/{run_dir.name}",
                save_dir=str(run_dir),
                offline=wandb.mode == "offline",
            )
        )
    if settings.mlflow is not None:
        _require("mlflow", "logger.mlflow")
        from lightning.pytorch.loggers import MLFlowLogger

        mlflow = settings.mlflow
        uri = mlflow.tracking_uri
        if uri is None:  # a file store in the run folder: needs no server or database library
            uri = (run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file stores to opt in
        found.append(
            MLFlowLogger(experiment_name=mlflow.experiment, run_name=f"{name}/{run_dir.name}", tracking_uri=uri)
        )
    return found


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _require(package: str, setting: str, alternative: str | None = None) -> None:
    if _installed(package) or (alternative is not None and _installed(alternative)):
        return
    raise DistillError(f"{setting} needs the {package} package: pip install {package}")
