"""Fully sharded data parallel training (PyTorch's FSDP2, `fully_shard`) with the teacher placed by size.

`trainer.strategy: fsdp` in a recipe selects `ShardedDistillation`, a Lightning `ModelParallelStrategy` with a
data-parallel mesh over every process. It runs wherever torch.distributed does: NCCL on GPUs, gloo on CPU (so it is
tested here; Lightning's own `FSDPStrategy`, FSDP1, refuses CPUs). What it does:

- the student is sharded block by block (a transformer's decoder layers, otherwise its top-level children), so
  each rank holds 1/W of its weights, gradients and optimizer state;
- each frozen model (the teacher, and the second frozen model of some tasks) is either sharded the same way,
  gathered one block at a time for its forward pass under no_grad, or replicated whole on every rank (no
  communication): `fsdp.frozen` picks, and `auto` replicates a model whose weights fit in a quarter of a device;
- checkpoints are single files in the single-process layout: the student's full weights and its optimizer state,
  gathered on rank 0. A huge sharded teacher is never gathered to be saved. They load back into a one-process run,
  and a sharded run resumes from them;
- `cpu_offload` (the strategy name `fsdp_cpu_offload`) keeps every sharded model's shards, their gradients and the
  optimizer state in CPU memory; each block is gathered onto the device for its forward and backward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

FrozenPlacement = Literal["auto", "shard", "replicate"]
AUTO_REPLICATE_FRACTION = 0.25  # `auto` replicates a frozen model whose weights take at most this share of a device


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def device_memory_bytes(device: torch.device, processes_per_node: int) -> int:
    """Memory of one device: the GPU's, or on CPU this node's RAM shared by its processes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, processes_per_node)


def resolve_placement(setting: FrozenPlacement, model: nn.Module, device_bytes: int) -> Literal["shard", "replicate"]:
    if setting != "auto":
        return setting
    return "replicate" if weight_bytes(model) <= AUTO_REPLICATE_FRACTION * device_bytes else "shard"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks sharded (and gathered) one at a time, before the model as a whole: a transformers model's
    `_no_split_modules` layers, otherwise the top-level children that are blocks of layers and hold weights. Single
    layers directly under the model (a stem, a head) stay with the model's own group."""
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    if block_names:
        return [m for m in model.modules() if type(m).__name__ in block_names]
    children = []
    for child in model.children():  # a list or dict of modules has no forward to gather around: its members do
        children += list(child.children()) if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child]
    return [c for c in children if any(True for _ in c.children()) and any(True for _ in c.parameters())]


def shard(model: nn.Module, mesh: Any, precision: str = "32-true", cpu_offload: bool = False) -> None:
    """Shard `model`'s blocks, then the model. Under bf16-mixed the weights are gathered in bf16 (half the traffic;
    autocast computes in bf16 anyway) and gradients reduced in fp32. `cpu_offload` keeps the shards in CPU memory
    (pinned when they are copied to a GPU)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    bf16 = precision == "bf16-mixed"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    options: dict[str, Any] = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda")
    for unit in shard_units(model):
        fully_shard(unit, **options)
    fully_shard(model, **options)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_copy(value: Any) -> Any:
    """A tensor whole and on the CPU (gathering a sharded one: every rank must call this in the same order)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def like(value: Any, target: torch.Tensor) -> Any:
    """`value`, a whole tensor, laid out as `target` is: this rank's shard when `target` is sharded, in the memory
    its shard lives in (the CPU's under cpu_offload, though the mesh is the GPUs')."""
    if isinstance(target, DTensor) and isinstance(value, torch.Tensor) and value.shape == target.shape:
        laid_out = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements)
        return laid_out if laid_out.device == target.device else laid_out.to(target.device)
    return value


@contextmanager
def detached(root: nn.Module, kept: list[nn.Module]) -> Iterator[None]:
    """`root` without the modules `kept` (taken out of their parents, put back after)."""
    slots = [
        (parent, name, child)
        for parent in root.modules()
        for name, child in parent._modules.items()
        if any(child is k for k in kept)
    ]
    for parent, name, _ in slots:
        parent._modules[name] = None
    try:
        yield
    finally:
        for parent, name, child in slots:
            parent._modules[name] = child


class ShardedDistillation(ModelParallelStrategy):
    """FSDP2 over all processes for a distill task (see the module's docstring)."""

    def __init__(self, frozen: FrozenPlacement = "auto", cpu_offload: bool = False, **kwargs: Any) -> None:
        super().__init__(save_distributed_checkpoint=False, **kwargs)
        self.frozen = frozen
        self.cpu_offload = cpu_offload
        self.placements: dict[str, str] = {}  # frozen model name -> "shard" | "replicate", once the task is sharded
        self.offloaded: list[nn.Module] = []  # the models whose shards stay in CPU memory (cpu_offload)

    def setup_environment(self) -> None:
        # Every process is one data-parallel rank (no tensor parallelism).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_task(self, task: nn.Module) -> None:
        """Shard the student (and trainable loss terms) and place each frozen model; called from the task's
        `configure_model`, before the optimizer is built. Safe to call again (test after fit)."""
        if is_sharded(task.student):
            return
        mesh, precision = self.device_mesh["data_parallel"], str(self.precision_plugin.precision)
        sharded = list(task.trainable_modules().values())  # the student, and loss terms with weights of their own
        device_bytes = device_memory_bytes(self.root_device, self.num_processes)
        for name, model in task.frozen_models().items():
            self.placements[name] = resolve_placement(self.frozen, model, device_bytes)
            if self.placements[name] == "shard":
                sharded.append(model)
        for module in sharded:
            shard(module, mesh, precision, self.cpu_offload)
        self.offloaded = sharded if self.cpu_offload else []
        if self.global_rank == 0:
            done = {"shard": "sharded", "replicate": "replicated"}
            laid_out = [
                f"{name} {done[how]} ({weight_bytes(getattr(task, name)) / 2**20:.1f} MiB)"
                for name, how in self.placements.items()
            ]
            offload = " (shards in CPU memory)" if self.cpu_offload else ""
            frozen = ", ".join(laid_out) or "no frozen model"
            print(f"fsdp: {self.world_size} ranks; student sharded{offload}; {frozen}")

    def model_to_device(self) -> None:
        # under cpu_offload the shards stay where FSDP put them (CPU memory); the rest of the task goes to the device
        with detached(self.model, self.offloaded):
            super().model_to_device()

    # -- checkpoints: the student whole, in the single-process layout -------------------------------------------
    def trainable_state(self) -> dict[str, Any]:
        task = self.lightning_module
        # every rank walks the same keys in the same order: gathering a shard is a collective
        return {k: full_copy(v) for k, v in task.without_frozen(task.state_dict()).items()}

    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = self.trainable_state()
        return state if self.global_rank == 0 else {}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        state = optimizer.state_dict()  # keyed by position in the parameter groups, as a single process keys it
        whole = {i: {k: full_copy(v) for k, v in s.items()} for i, s in sorted(state["state"].items())}
        return {"state": whole, "param_groups": state["param_groups"]} if self.global_rank == 0 else {}

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        checkpoint = self.checkpoint_io.load_checkpoint(path, weights_only=True)  # tensors and plain data only
        self.load_trainable_state(checkpoint["state_dict"], path)
        # no optimizers when testing: the states in the file are then left unused
        for optimizer, state in zip(self.optimizers, checkpoint.get("optimizer_states", []), strict=False):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            laid_out = {i: {k: like(v, params[i]) for k, v in s.items()} for i, s in state["state"].items()}
            optimizer.load_state_dict({"state": laid_out, "param_groups": state["param_groups"]})
        return checkpoint

    def load_trainable_state(self, state: dict[str, Any], path: Path) -> None:
        task = self.lightning_module
        targets = task.without_frozen(task.state_dict(keep_vars=True))
        missing, unexpected = sorted(targets.keys() - state.keys()), sorted(state.keys() - targets.keys())
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit this student (missing {missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for key, target in targets.items():
                target.copy_(like(state[key], target))
