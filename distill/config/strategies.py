"""The names a recipe can give `trainer.strategy` (`auto` and Lightning's registered strategies) and what distill does
with each, decided when the recipe is read, before any teacher is trained or data fetched:

- `fsdp` and every other name Lightning registers for its FSDP strategy (`fsdp_cpu_offload`) become distill's own
  sharded strategy (engine.fsdp) with that name's options, so the frozen teacher is placed and kept out of
  checkpoints the same way under each;
- `auto`, `single_device` and the DDP names run as Lightning builds them (distill's task keeps the frozen models out
  of DDP itself);
- DeepSpeed runs as Lightning builds it where it can (a CUDA GPU and the deepspeed package), XLA where torch_xla is
  installed; elsewhere, and for a name Lightning does not know, the recipe is refused in one line naming what to
  use instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from distill.errors import closest

SHARDED_OPTIONS = ("cpu_offload",)  # the FSDP options a registered name may carry, kept by distill's strategy
RUNS_EVERYWHERE = "auto, ddp or fsdp"


def registry() -> dict[str, dict[str, Any]]:
    from lightning.pytorch.strategies import StrategyRegistry

    return {name: StrategyRegistry[name] for name in StrategyRegistry.available_strategies()}


def strategy_names() -> list[str]:
    """Every name `trainer.strategy` can take, as Lightning spells them."""
    return ["auto", *registry()]


def family(name: str) -> str:
    """'auto', 'single', 'ddp', 'fsdp', 'deepspeed', 'xla' or 'unknown'."""
    name = name.lower()
    if name == "auto":
        return "auto"
    entry = registry().get(name)
    if entry is None:
        return "unknown"
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy

    cls = entry["strategy"]
    if "xla" in cls.__name__.lower() or "tpu" in cls.__name__.lower():  # before DDP: XLAStrategy is one
        return "xla"
    for base, kind in ((FSDPStrategy, "fsdp"), (DeepSpeedStrategy, "deepspeed"), (DDPStrategy, "ddp")):
        if issubclass(cls, base):
            return kind
    return "single" if issubclass(cls, SingleDeviceStrategy) else "unknown"


def short_list() -> str:
    """The names, those that differ only by DDP's `_find_unused_parameters_true/false` said once."""
    suffix = "_find_unused_parameters_"
    names = [n for n in strategy_names() if suffix not in n]
    return f"{', '.join(names)}; the ddp names also with {suffix}true or {suffix}false"


def sharded_options(name: Any) -> dict[str, Any] | None:
    """The options of distill's sharded strategy for a name of the FSDP family (`fsdp_cpu_offload` ->
    {'cpu_offload': True}), None for any other name."""
    if not isinstance(name, str) or family(name) != "fsdp":
        return None
    given = registry()[name.lower()]["init_params"]
    return {key: bool(given.get(key, False)) for key in SHARDED_OPTIONS}


def uses_cuda(accelerator: Any) -> bool:
    """Whether the trainer's accelerator setting lands on a CUDA GPU (without initializing CUDA)."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def strategy_problem(trainer: dict[str, Any]) -> str | None:
    """Why the trainer arguments' strategy cannot run here (a sentence naming what to use instead), or None."""
    name, accelerator = trainer.get("strategy", "auto"), trainer.get("accelerator", "auto")
    if not isinstance(name, str):
        return f"must be a strategy name ({RUNS_EVERYWHERE}...), got {name!r}"
    kind = family(name)
    if kind == "unknown":
        match = closest(name.lower(), strategy_names())
        hint = f"did you mean '{match}'?" if match else f"names: {short_list()}"
        return f"is '{name}', which is no strategy ({hint})"
    init = registry().get(name.lower(), {}).get("init_params", {})
    if kind == "fsdp" and set(init) - set(SHARDED_OPTIONS):
        return f"is '{name}', whose FSDP options distill's sharded strategy does not take: use fsdp"
    if kind == "ddp" and init.get("start_method") == "fork":
        # seen here on the CPU: the forked rank hung in its first training steps (the notebook launcher's way)
        return f"is '{name}', which forks the running process into ranks, and a forked rank hangs: use ddp or ddp_spawn"
    if kind == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            return f"is '{name}', which needs the deepspeed package (pip install 'distill[deepspeed]'); or use fsdp"
        if not uses_cuda(accelerator):
            where = "this machine has no CUDA GPU" if accelerator == "auto" else f"the accelerator is {accelerator}"
            return f"is '{name}': DeepSpeed runs on CUDA GPUs only, and {where}; use ddp or fsdp"
        nvme = init.get("nvme_path", "/local_nvme")
        if init.get("remote_device") == "nvme" and not Path(nvme).is_dir():
            return f"is '{name}', which offloads to {nvme}, a folder this machine lacks: use deepspeed_stage_3_offload"
    if kind == "xla" and importlib.util.find_spec("torch_xla") is None:
        return f"is '{name}', which needs torch_xla and a TPU (not installed here): use {RUNS_EVERYWHERE}"
    return None
