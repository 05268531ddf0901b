"""The typed settings a recipe maps onto. Every field is documented: `help` becomes the CLI's reference.

A task may have a section of its own (`align_distil:`, `speculative:`, `amu:`): its settings dataclass lives in the
task's module and is declared by its `TaskSpec`; the loader checks it there (`distill.config.load`).

Components (a dataset, a model, a loss term) are written `{name: ..., <its own arguments>}` and are
checked against the named constructor's signature (see `distill.config.components`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal


def setting(default: Any, help: str) -> Any:
    """A dataclass field with a default and a help line."""
    if getattr(type(default), "__hash__", None) is None:  # mutable (list, dict, dataclass): copy per instance
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class ModelSpec(dict):
    """A model: `{name: <registry name | timm:<name> | torchvision:<name>>, <model arguments>}`."""


class DatasetSpec(dict):
    """A dataset: `{name: <registry name>, <datamodule arguments>}`."""


class LossTermSpec(dict):
    """A loss term: `{weight: float, loss: <registry name, default the term's key>, <loss arguments>}`."""


@dataclass
class RunSettings:
    root: str = setting("runs", "folder that holds the run folders")
    name: str | None = setting(None, "run folder name under root (default: the recipe's file name)")


@dataclass
class OptimizerSettings:
    name: Literal["sgd", "adamw"] = setting("sgd", "optimizer")
    lr: float = setting(0.05, "peak learning rate")
    weight_decay: float = setting(5e-4, "weight decay (decoupled for adamw)")
    momentum: float = setting(0.9, "sgd momentum")
    nesterov: bool = setting(False, "sgd Nesterov momentum")
    betas: list[float] = setting([0.9, 0.999], "adamw betas")
    eps: float = setting(1e-8, "adamw epsilon")


@dataclass
class SchedulerSettings:
    name: Literal["multistep", "cosine", "constant"] = setting("multistep", "learning-rate schedule, stepped per batch")
    milestones: list[int] = setting([150, 180, 210], "multistep: epochs at which the lr is multiplied by gamma")
    gamma: float = setting(0.1, "multistep: decay factor")
    warmup_epochs: float = setting(0.0, "linear warm-up from 0 over this many epochs (fractions allowed)")
    min_lr: float = setting(0.0, "cosine: final learning rate")


@dataclass
class LossSettings:
    ce_weight: float = setting(1.0, "weight of cross-entropy on the labels (0 disables it)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    terms: dict[str, LossTermSpec] = setting({}, "distillation terms by name, each with an explicit weight")


@dataclass
class TeacherTraining:
    seed: int = setting(0, "seed of the teacher's training run")
    data: dict[str, Any] = setting(
        {}, "data settings of the teacher run: merged over `data`, or replacing it when they name a dataset"
    )
    ce_weight: float = setting(1.0, "weight of cross-entropy (the teacher trains on labels only)")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    optimizer: OptimizerSettings = setting(OptimizerSettings(), "the teacher's optimizer")
    scheduler: SchedulerSettings = setting(SchedulerSettings(), "the teacher's schedule")
    trainer: dict[str, Any] = setting({}, "lightning.Trainer arguments for the teacher run (as `trainer:`)")


@dataclass
class TeacherSettings:
    model: ModelSpec | None = setting(None, "the teacher's architecture")
    checkpoint: str | None = setting(
        None,
        "teacher weights (a distill checkpoint, {'model': state_dict} or a state_dict): a file, a URL fetched once "
        "into the store, or 'published' (the lineage's published CIFAR-100 teacher of the model, fetched once)",
    )
    checkpoint_sha256: str | None = setting(None, "the sha256 a checkpoint given by URL must have (null: unchecked)")
    train: TeacherTraining | None = setting(
        None,
        "train the teacher first with these settings (without a checkpoint, or when a published or URL one cannot be "
        "fetched)",
    )
    store: str = setting("runs/teachers", "where trained and fetched teachers are kept, for reuse")
    recipe: str | None = setting(
        None,
        "or train the teacher by running this recipe (without a checkpoint, or when a published or URL one cannot be "
        "fetched): its best student becomes the teacher",
    )
    overrides: list[str] = setting([], "key=value overrides for that recipe (e.g. data.swap=true)")
    cache: str | None = setting(
        None,
        "a folder caching the teacher's outputs for reuse by later runs: per (epoch, sample view) for on_device "
        "image data, per (row, position) for language models",
    )
    cache_top_k: int | None = setting(
        None, "entries kept per sample (images) or per token (language models); null: all of them, exact"
    )
    dtype: Literal["float32", "bfloat16", "float16", "int8"] | None = setting(
        None,
        "hold the frozen model in this precision (less memory; int8: Hugging Face models on a CUDA GPU with "
        "bitsandbytes); null: as loaded",
    )


@dataclass
class SpeedSettings:
    fast_path: Literal["auto", "on", "off"] = setting(
        "off",
        "the training set kept on the accelerator with augmentation in whole batches there (data that supports it: "
        "cifar100) and channels_last models; auto: on when the run trains on a CUDA GPU",
    )
    channels_last: bool = setting(False, "student and teacher (and on-device batches) in channels_last memory format")
    compile_student: bool = setting(False, "torch.compile the student (in place: checkpoint keys unchanged)")
    compile_teacher: bool = setting(False, "torch.compile the frozen teacher")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = setting(
        "default",
        "torch.compile's mode; reduce-overhead runs the compiled steps as CUDA graphs (small models on a GPU). The "
        "first batch shape is compiled, other shapes (the epoch's last batch) and the student's evaluation run eagerly",
    )


@dataclass
class WandbSettings:
    project: str = setting("distill", "the W&B project")
    entity: str | None = setting(None, "the W&B team or user (null: your default)")
    mode: Literal["online", "offline"] = setting("online", "offline: write the run locally, `wandb sync` it later")


@dataclass
class MLflowSettings:
    experiment: str = setting("distill", "the MLflow experiment")
    tracking_uri: str | None = setting(None, "the tracking server or store (null: a file store in the run folder)")


@dataclass
class LoggerSettings:
    tensorboard: bool | None = setting(None, "TensorBoard event files (null: when tensorboard is installed)")
    wandb: WandbSettings | None = setting(None, "Weights & Biases (null: off)")
    mlflow: MLflowSettings | None = setting(None, "MLflow (null: off)")


@dataclass
class FSDPSettings:
    frozen: Literal["auto", "shard", "replicate"] = setting(
        "auto",
        "trainer.strategy fsdp: shard each frozen model (teacher) over the ranks, replicate it whole on each, or "
        "auto: replicate when its weights take at most a quarter of one device's memory",
    )


@dataclass
class Recipe:
    description: str = setting("", "one line: what this recipe does (shown by `distill recipes`)")
    task: str = setting("classification", "what is trained: a registered task (`distill tasks` lists them)")
    seed: int = setting(0, "global seed in [0, 2^32 - 1]: same seed, same metrics on CPU")
    run: RunSettings = setting(RunSettings(), "where the run folder goes")
    data: DatasetSpec | None = setting(None, "the dataset")
    student: ModelSpec | None = setting(None, "the student's architecture")
    init: str | None = setting(
        None,
        "the student's first weights: null (fresh), 'teacher' (a copy), 'reference' (the teacher recipe's own teacher) "
        "or a path",
    )
    teacher: TeacherSettings | None = setting(None, "the frozen teacher (none: train the student alone)")
    second_teacher: TeacherSettings | None = setting(
        None, "a second frozen model, for the tasks that read one (the task says what it is)"
    )
    speed: SpeedSettings = setting(SpeedSettings(), "memory format and compilation (precision: trainer.precision)")
    fsdp: FSDPSettings = setting(FSDPSettings(), "how `trainer.strategy: fsdp` lays out the frozen models")
    logger: LoggerSettings = setting(LoggerSettings(), "where metrics go besides the run folder's CSV log")
    loss: LossSettings = setting(LossSettings(), "cross-entropy weight and distillation terms")
    optimizer: OptimizerSettings = setting(OptimizerSettings(), "the student's optimizer")
    scheduler: SchedulerSettings = setting(SchedulerSettings(), "the student's learning-rate schedule")
    trainer: dict[str, Any] = setting({}, "passed unchanged to lightning.Trainer (max_epochs, devices, precision...)")


REQUIRED = ("data", "student")

# Trainer arguments distill owns: it builds them from the run settings.
RESERVED_TRAINER_KEYS = {
    "callbacks": "distill adds its own callbacks",
    "logger": "distill logs CSV (and TensorBoard when installed) to the run folder",
    "default_root_dir": "use run.root and run.name",
    "enable_checkpointing": "distill always writes last and best checkpoints",
    "plugins": "plugins are objects, which a recipe cannot build",
    "use_distributed_sampler": "distill's loaders split the data over the ranks themselves",
}

# Shown when printed, so a recipe has no hidden Trainer defaults.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 10,
    "accelerator": "auto",
    "devices": 1,
    "precision": "32-true",
    "strategy": "auto",
    "log_every_n_steps": 10,
}
