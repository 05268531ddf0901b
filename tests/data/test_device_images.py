"""CIFAR kept on the device: index batches become augmented images after the transfer, replayably."""

from types import SimpleNamespace

import torch

from distill.data import CIFAR100DataModule
from distill.data.synthetic import write_fake_cifar100


def modules(tmp_path, n_train: int = 100, **kwargs):
    write_fake_cifar100(tmp_path, n_train=n_train, n_test=20, seed=0)
    on, off = (
        CIFAR100DataModule(root=str(tmp_path), num_workers=0, on_device=flag, **kwargs) for flag in (True, False)
    )
    on.setup(), off.setup()
    return on, off


def test_training_batches_are_the_replayed_views_and_eval_batches_the_plain_images(tmp_path):
    on, off = modules(tmp_path, augment_seed=7, batch_size=16)
    indices, labels = next(iter(on.train_dataloader()))
    on.trainer = SimpleNamespace(training=True, current_epoch=3)
    x, y, same = on.on_after_batch_transfer((indices, labels), 0)
    assert torch.equal(same, indices) and torch.equal(y, on.train_set.labels[indices])
    expected = on.augmentation.view(on.train_set.images[indices], 7, 3, indices)  # replayed later, elsewhere
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    on.trainer = SimpleNamespace(training=True, current_epoch=4)
    assert not torch.equal(on.on_after_batch_transfer((indices, labels), 0)[0], x)  # the next epoch's views
    eval_indices, eval_labels = next(iter(on.val_dataloader()))
    on.trainer = SimpleNamespace(training=False, current_epoch=4)
    images, _ = on.on_after_batch_transfer((eval_indices, eval_labels), 0)
    plain = torch.stack([off.val_set[int(i)][0] for i in eval_indices])  # the CPU path's normalized images
    torch.testing.assert_close(images, plain)


def test_channels_last_batches_and_few_shot_indices_of_the_whole_set(tmp_path):
    on, _ = modules(tmp_path, n_train=2000, channels_last=True, shots=1, shot_seed=0)
    indices, labels = next(iter(on.train_dataloader()))
    on.trainer = SimpleNamespace(training=True, current_epoch=0)
    x, _, same = on.on_after_batch_transfer((indices, labels), 0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert set(same.tolist()) <= set(on.train_set.indices)  # indices of the full training set, not of the subset


def test_a_training_batch_is_made_in_a_few_operations_without_waiting_for_the_device(tmp_path):
    from tests.op_count import OpCount

    on, _ = modules(tmp_path, n_train=300, channels_last=True, batch_size=64)
    loader = iter(on.train_dataloader())
    on.trainer = SimpleNamespace(training=True, current_epoch=2)
    on.on_after_batch_transfer(next(loader), 0)  # the epoch's first batch makes its parameters for every sample
    batch = next(loader)  # made on the host (and moved in one copy each for indices and labels)
    with OpCount() as count:
        x, _, _ = on.on_after_batch_transfer(batch, 0)
    assert x.shape == (64, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    # no tensor made from host numbers (on a GPU: a copy that waits for the queue), no value read back
    assert count.host_values == 0 and count.reads == 0, count.ops
    # gather, parameters' lookup, crop and flip in one gather, pad, normalize: a dozen kernels, was 40-odd
    assert count.kernels <= 12, count.ops
