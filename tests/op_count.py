"""Counting what a piece of code asks of the device, on the CPU: each operation torch dispatches (on a GPU, a kernel
launch unless it is a view), each tensor made from host values (on a GPU, a copy that waits for the device's queue)
and each read of a tensor's value to the host (a wait for the device)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HOST_VALUES = torch.ops.aten.lift_fresh.default  # torch.tensor(<numbers>, device=...)
READ = torch.ops.aten._local_scalar_dense.default  # .item(), float(), bool(), .tolist()


class OpCount(TorchDispatchMode):
    """`with OpCount() as count: ...` counts the operations dispatched inside, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.kernels = 0  # operations that are not views
        self.host_values = 0
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        self.kernels += not func.is_view
        self.host_values += func is HOST_VALUES
        self.reads += func is READ
        return func(*args, **(kwargs or {}))
