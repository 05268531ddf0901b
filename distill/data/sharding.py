"""How the data is split over the processes of a distributed run. distill's loaders shard it themselves (the
Trainer runs with `use_distributed_sampler=False`): training in the order a single process would see, evaluation
with every sample counted exactly once."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SeededShardSampler(DistributedSampler):
    """The training order: one permutation of the whole set drawn from the epoch's seed; with W processes, rank r
    takes every W-th sample of it (from the r-th), so the ranks' k-th batches together are exactly the k-th batch of
    a single process whose batch is W times larger. As DistributedSampler, the order is padded with its own start
    to a multiple of W. The loader sets `epoch_seed` before each epoch; rank and world size come from
    torch.distributed when it is initialized (else 0 and 1)."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        my_rank, my_world = rank_and_world()
        world = num_replicas if num_replicas is not None else my_world
        me = rank if rank is not None else my_rank
        super().__init__(dataset, num_replicas=world, rank=me, shuffle=True, drop_last=False)
        self.epoch_seed = 0

    def global_order(self, epoch_seed: int) -> list[int]:
        """The epoch's order over all ranks, padded to a multiple of W: what one process would read."""
        generator = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        return order + order[: self.total_size - len(order)]

    def __iter__(self) -> Any:
        return iter(self.global_order(self.epoch_seed)[self.rank : self.total_size : self.num_replicas])


class EvalShardBatches(Sampler[list[int]]):
    """Unshuffled evaluation batches of `batch_size`. With W processes, rank r takes samples r, r+W, r+2W...: no
    sample twice and none added as padding (DistributedSampler's padding counts some samples twice), so metrics
    gathered over the ranks are those of one process. Every rank gets the same number of batches, because the
    sharded models' gathers are collectives that must stay in step: where a rank would have one batch fewer, its
    largest batch is split in two."""

    def __init__(self, size: int, batch_size: int) -> None:
        self.size, self.batch_size = size, batch_size

    def batches(self, rank: int, world: int) -> list[list[int]]:
        mine = list(range(rank, self.size, world))
        most = -(-self.size // world)  # samples of the rank with the most
        count = -(-most // self.batch_size)  # and its batches
        chunks = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        while len(chunks) < count:
            largest = max(range(len(chunks)), key=lambda i: len(chunks[i]), default=None)
            if largest is None or len(chunks[largest]) < 2:
                raise ValueError(
                    f"{self.size} evaluation samples in batches of {self.batch_size} cannot give each of {world} "
                    "processes the same number of batches: use fewer devices or a larger data.batch_size"
                )
            chunk = chunks.pop(largest)
            half = len(chunk) // 2
            chunks[largest:largest] = [chunk[:half], chunk[half:]]
        return chunks

    def __iter__(self) -> Any:
        return iter(self.batches(*rank_and_world()))

    def __len__(self) -> int:
        return len(self.batches(*rank_and_world()))
