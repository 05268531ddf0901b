"""The Lightning Trainer a run uses: the recipe's arguments, distill's checkpoints, loggers, fault handling and
progress bar; and the plain one evaluation uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from distill.config.schema import FSDPSettings, LoggerSettings
from distill.config.strategies import sharded_options
from distill.engine.loggers import run_loggers
from distill.engine.quiet import held_back_info
from distill.engine.run_folder import BEST, LAST, RunFolder
from distill.errors import DistillError

DEVICE_KEYS = ("accelerator", "devices", "num_nodes", "precision", "strategy")  # what evaluation takes of `trainer`


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint for checkpoints written at validation and epoch ends only, as distill's are: its
    check after every training batch, which saves only for `every_n_train_steps` or `train_time_interval`, is
    skipped (about 20 us of host time a step for each such callback on a 2-core CPU)."""

    def __init__(self, **options: Any) -> None:
        if options.get("every_n_train_steps") or options.get("train_time_interval") is not None:
            raise ValueError("EpochCheckpoint saves at validation and epoch ends only")
        super().__init__(**options)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        return  # nothing is ever due after a batch (see the class)

    @property
    def state_key(self) -> str:
        # Lightning builds this string (a repr of the settings) at every hook call of every step, to name a profiler
        # section; the settings are fixed once constructed, so it is built once. Checkpoints store this callback's
        # state (the best score and path) under it: it is ModelCheckpoint's own, so that runs saved with either
        # class resume with the other.
        if "_fixed_state_key" not in self.__dict__:
            key = ModelCheckpoint.state_key.fget(self).removeprefix(type(self).__qualname__)
            self.__dict__["_fixed_state_key"] = ModelCheckpoint.__qualname__ + key
        return self.__dict__["_fixed_state_key"]


def progress_bar(enabled: bool) -> list[Callback]:
    if enabled and importlib.util.find_spec("rich"):
        from lightning.pytorch.callbacks import RichProgressBar

        class ProgressBar(RichProgressBar):
            """Lightning's rich bar without `v_num` (the logger's version is the run folder's `logs`, not news), with
            the training values the task last logged (`progress_values`: numbers already on the host, so showing
            them never waits for the accelerator)."""

            def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
                metrics = super().get_metrics(trainer, module)
                metrics.pop("v_num", None)
                return {**metrics, **getattr(module, "progress_values", {})}

        return [ProgressBar(leave=True)]
    return []


def with_strategy(trainer_args: dict[str, Any], fsdp: FSDPSettings | None = None) -> dict[str, Any]:
    """The recipe's trainer arguments, with every name of the FSDP family (`fsdp`, `fsdp_cpu_offload`) made distill's
    sharded strategy (engine.fsdp) with that name's options: Lightning's own FSDP would wrap the frozen teacher with
    the student and expect its weights in the checkpoints distill writes without them."""
    options = sharded_options(trainer_args.get("strategy"))
    if options is None:
        return dict(trainer_args)
    from distill.engine.fsdp import ShardedDistillation

    return {**trainer_args, "strategy": ShardedDistillation(frozen=(fsdp or FSDPSettings()).frozen, **options)}


def make_trainer(
    trainer_args: dict[str, Any],
    run_dir: Path,
    monitor: tuple[str, str] = ("val/acc", "max"),
    callbacks: list[Callback] = (),
    fsdp: FSDPSettings | None = None,
    logger: LoggerSettings | None = None,
) -> L.Trainer:
    """A Lightning Trainer with the recipe's arguments, writing checkpoints `last` and `best` to the run folder and
    metrics to the loggers of `logger` (the CSV log always)."""
    folder = RunFolder(run_dir)
    best = EpochCheckpoint(
        dirpath=folder.checkpoints,
        filename=Path(BEST).stem,
        monitor=monitor[0],
        mode=monitor[1],
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # The last epoch's state, every epoch: what --resume continues from. (A best checkpoint's `save_last` writes it
    # only in an epoch that also saved a best one, so a resume would repeat every epoch since the last best.)
    last = EpochCheckpoint(
        dirpath=folder.checkpoints,
        filename=Path(LAST).stem,
        monitor=None,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    from distill.engine.faults import AtomicCheckpointIO, StopOnNonFiniteLoss

    args = with_strategy(trainer_args, fsdp)
    # `best` first: it is `trainer.checkpoint_callback`, whose best_model_path the final test reads
    own = [best, last, StopOnNonFiniteLoss(), *progress_bar(args.get("enable_progress_bar", True)), *callbacks]
    with held_back_info() as device_info:
        trainer = build_trainer(
            **args,
            default_root_dir=run_dir,
            logger=run_loggers(run_dir, logger),
            callbacks=own,
            plugins=[AtomicCheckpointIO(keep_previous=folder.last)],
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


def evaluation_trainer(trainer_args: dict[str, Any], fsdp: FSDPSettings | None = None) -> L.Trainer:
    """A Trainer for `validate`/`test` of a checkpoint: the recipe's devices, precision and strategy; no logger,
    checkpoints or progress bar; Lightning's lines about the devices it found held back (nothing to act on)."""
    args = with_strategy({k: v for k, v in trainer_args.items() if k in DEVICE_KEYS}, fsdp)
    with held_back_info():
        return build_trainer(
            **args, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
        )
