"""Replayable crop+flip: parameters from (seed, epoch, index) only; batched views equal torchvision's per sample."""

import torch
from torchvision.transforms.v2 import functional as TF

import distill.data.cifar as cifar
from distill.data.replay_augment import CropFlip

AUGMENT = CropFlip(cifar.MEAN, cifar.STD)


def images(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_parameters_depend_only_on_seed_epoch_and_index():
    indices = torch.arange(1000)
    params = AUGMENT.params(seed=3, epoch=5, indices=indices)
    assert params.shape == (1000, 3)
    # the same sample gets the same view whatever batch it is in and in whatever order
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(AUGMENT.params(3, 5, order[:64]), params[order[:64]])
    assert not torch.equal(AUGMENT.params(3, 6, indices), params)  # another epoch, other views
    assert not torch.equal(AUGMENT.params(4, 5, indices), params)  # another seed, other views
    # every offset and both flips occur, about uniformly
    for column, values in ((0, 9), (1, 9), (2, 2)):
        counts = torch.bincount(params[:, column], minlength=values)
        assert len(counts) == values and counts.min() > 1000 / values * 0.6


def test_batched_views_equal_torchvision_crop_and_flip_per_sample():
    batch, indices = images(16), torch.arange(100, 116)
    params = AUGMENT.params(0, 2, indices)
    views = AUGMENT.view(batch, seed=0, epoch=2, indices=indices)
    mean, std = torch.tensor(AUGMENT.mean).view(3, 1, 1), torch.tensor(AUGMENT.std).view(3, 1, 1)
    for i in range(16):
        top, left, flip = params[i].tolist()
        padded = TF.pad(batch[i], [4, 4, 4, 4], fill=0)
        expected = TF.crop(padded, top, left, 32, 32)
        if flip:
            expected = TF.horizontal_flip(expected)
        torch.testing.assert_close(views[i], (expected.float() / 255 - mean) / std)
    # replaying the views later (another call, another batch split) gives the same tensors
    torch.testing.assert_close(torch.cat([AUGMENT.view(batch[:5], 0, 2, indices[:5]), views[5:]]), views)


def test_without_flip_or_padding_the_view_is_the_normalized_image():
    plain = CropFlip(cifar.MEAN, cifar.STD, padding=0, flip=False)
    batch = images(4)
    torch.testing.assert_close(plain.view(batch, 0, 0, torch.arange(4)), plain.normalize(batch))
