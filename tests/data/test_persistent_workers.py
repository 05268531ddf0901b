"""The train loader keeps its workers across epochs, and a sample's augmentation depends only on (seed, epoch, index):
not on the number of workers, nor on whether the loader started at that epoch (a resumed run)."""

from __future__ import annotations

import torch

from distill.data import CIFAR100DataModule
from distill.data.synthetic import write_fake_cifar100


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels in loader]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b, strict=True)
    )


def test_workers_live_across_epochs_and_samples_depend_only_on_seed_epoch_and_index(tmp_path):
    write_fake_cifar100(tmp_path, n_train=48, n_test=8, seed=0)
    data = {w: CIFAR100DataModule(root=str(tmp_path), batch_size=16, num_workers=w, augment=True) for w in (0, 2)}
    for module in data.values():
        module.seed = 3
        module.setup()

    loader = data[2].train_dataloader()
    assert loader.persistent_workers
    two_workers = [batches(loader)]
    iterator, pids = loader._iterator, [worker.pid for worker in loader._iterator._workers]
    two_workers.append(batches(loader))
    try:
        assert loader._iterator is iterator and [worker.pid for worker in iterator._workers] == pids
    finally:
        iterator._shutdown_workers()

    in_process = data[0].train_dataloader()
    first_epoch = batches(in_process)
    second_batches = iter(in_process)
    state = torch.get_rng_state()
    second_epoch = [next(second_batches)]
    assert torch.equal(torch.get_rng_state(), state)  # reading samples leaves the training step's RNG alone
    second_epoch += list(second_batches)
    assert same(first_epoch, two_workers[0]) and same(second_epoch, two_workers[1])
    assert not torch.equal(first_epoch[0][0], second_epoch[0][0])

    resumed = data[0].train_dataloader()
    resumed.epoch_fn = lambda: 1  # as a trainer restored from an epoch-0 checkpoint reports it
    assert same(batches(resumed), two_workers[1])
