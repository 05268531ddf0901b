"""The scikit-learn digits data module."""

import re

import numpy as np
import pytest
import torch

from distill.data import DigitsDataModule
from distill.data.digits import load_digits_arrays
from distill.errors import DistillError


def stack(dataset):
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def test_attributes_are_known_before_setup():
    datamodule = DigitsDataModule()
    assert (datamodule.num_classes, datamodule.in_chans, datamodule.image_size) == (10, 1, 8)


def test_samples_are_float_images_with_int_labels():
    datamodule = DigitsDataModule()
    datamodule.setup()
    image, label = datamodule.train_set[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    images, labels = next(iter(datamodule.val_dataloader()))
    assert images.shape == (64, 1, 8, 8) and labels.dtype == torch.int64


def test_splits_partition_the_1797_images_stratified():
    datamodule = DigitsDataModule(val_fraction=0.2, test_fraction=0.1)
    datamodule.setup()
    indices = [datamodule.train_indices, datamodule.val_indices, datamodule.test_indices]
    assert sum(len(i) for i in indices) == 1797
    assert len(np.unique(np.concatenate(indices))) == 1797
    assert [len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)] == [len(i) for i in indices]
    assert abs(len(datamodule.val_set) - 0.2 * 1797) <= 1 and abs(len(datamodule.test_set) - 0.1 * 1797) <= 1
    _, test_labels = stack(datamodule.test_set)
    assert torch.bincount(test_labels, minlength=10).min() >= 17  # every class, in proportion (~18 each)


def test_samples_are_the_original_images():
    datamodule = DigitsDataModule()
    datamodule.setup()
    raw_images, raw_labels = load_digits_arrays()
    val_images, val_labels = stack(datamodule.val_set)
    train_images = torch.from_numpy(raw_images[datamodule.train_indices])
    restored = val_images * train_images.std() + train_images.mean()
    assert torch.allclose(restored, torch.from_numpy(raw_images[datamodule.val_indices]), atol=1e-5)
    assert torch.equal(val_labels, torch.from_numpy(raw_labels[datamodule.val_indices]))


def test_split_is_determined_by_split_seed():
    first, same, other = DigitsDataModule(split_seed=1), DigitsDataModule(split_seed=1), DigitsDataModule(split_seed=2)
    for datamodule in (first, same, other):
        datamodule.setup()
    assert torch.equal(stack(first.train_set)[0], stack(same.train_set)[0])
    assert torch.equal(stack(first.test_set)[1], stack(same.test_set)[1])
    assert not np.array_equal(first.test_indices, other.test_indices)


def test_train_samples_keeps_the_first_n_of_the_training_split():
    full, few = DigitsDataModule(), DigitsDataModule(train_samples=50)
    full.setup()
    few.setup()
    assert len(few.train_set) == 50
    np.testing.assert_array_equal(few.train_indices, full.train_indices[:50])
    assert len(few.val_set) == len(full.val_set)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_samples": 5000}, "data.train_samples must be <= 1077 (the size of the training split), got 5000"),
        ({"train_samples": 9}, "data.train_samples must be >= 10, got 9"),
        ({"val_fraction": 0.0}, "data.val_fraction must be in (0, 1), got 0.0"),
        ({"test_fraction": 1.5}, "data.test_fraction must be in (0, 1), got 1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.val_fraction + data.test_fraction must be < 1"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        DigitsDataModule(**kwargs)


def test_training_images_are_normalized():
    datamodule = DigitsDataModule()
    datamodule.setup()
    images, _ = stack(datamodule.train_set)
    assert abs(images.mean().item()) < 1e-5
    assert abs(images.std().item() - 1.0) < 1e-4


def shifts(image: torch.Tensor, background: float) -> list[torch.Tensor]:
    """`image` shifted by up to one pixel in each direction, `background` shifted in."""
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1), value=background)
    return [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]


def test_augment_shifts_training_images_only():
    plain, augmented = DigitsDataModule(), DigitsDataModule(augment=True)
    plain.setup()
    augmented.setup()
    background = stack(plain.train_set)[0].min().item()  # pixel value 0, normalized
    torch.manual_seed(0)
    changed = 0
    for i in range(20):
        original, moved = plain.train_set[i][0], augmented.train_set[i][0]
        assert any(torch.allclose(moved, candidate) for candidate in shifts(original, background))
        changed += not torch.equal(moved, original)
    assert changed >= 10
    assert torch.equal(stack(plain.val_set)[0], stack(augmented.val_set)[0])
    assert torch.equal(augmented.val_set[3][0], augmented.val_set[3][0])
