"""Class-folder image data read by torchvision's ImageFolder."""

import re
import shutil

import pytest
import torch

from distill.data import ImageFolderDataModule
from distill.data.synthetic import write_fake_imagefolder
from distill.errors import DistillError

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture
def root(tmp_path):
    return write_fake_imagefolder(tmp_path / "images", classes=CLASSES, per_class=2, size=20, seed=0)


def make(root, **kwargs):
    return ImageFolderDataModule(root=str(root), image_size=16, num_workers=0, **kwargs)


def test_classes_are_counted_before_setup(root):
    datamodule = make(root)
    assert (datamodule.num_classes, datamodule.in_chans, datamodule.image_size) == (3, 3, 16)
    assert datamodule.classes == CLASSES


def test_samples_have_the_image_size(root):
    datamodule = make(root, batch_size=4)
    datamodule.setup("fit")
    assert len(datamodule.train_set) == len(datamodule.val_set) == 6
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and type(images) is torch.Tensor
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    image, label = datamodule.val_set[5]
    assert image.shape == (3, 16, 16) and label == 2  # sorted class folders give the labels


def test_eval_is_deterministic_and_training_is_augmented(root):
    datamodule = make(root)
    datamodule.setup("fit")
    torch.manual_seed(0)
    assert torch.equal(datamodule.val_set[0][0], datamodule.val_set[0][0])
    assert len({datamodule.train_set[0][0].numpy().tobytes() for _ in range(5)}) > 1
    plain = make(root, augment=False)
    plain.setup("fit")
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_normalizes_with_mean_and_std(root):
    shifted = make(root, augment=False, mean=[0.0, 0.0, 0.0], std=[0.5, 0.5, 0.5])
    default = make(root, augment=False)
    shifted.setup()
    default.setup()
    pixels = shifted.val_set[0][0] * 0.5
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (pixels - mean) / std
    assert torch.allclose(default.val_set[0][0], expected, atol=1e-5)
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_test_split_falls_back_to_val(root, tmp_path):
    datamodule = make(root)
    datamodule.setup("test")
    assert datamodule.test_set is datamodule.val_set
    with_test = write_fake_imagefolder(
        tmp_path / "three", CLASSES, per_class=1, size=20, splits=("train", "val", "test")
    )
    datamodule = make(with_test)
    datamodule.setup("test")
    assert datamodule.test_set is not datamodule.val_set and len(datamodule.test_set) == 3


def test_missing_root_or_split(root, tmp_path):
    with pytest.raises(DistillError, match=f"image folder {re.escape(str(tmp_path / 'none'))} not found"):
        make(tmp_path / "none")
    shutil.rmtree(root / "val")
    with pytest.raises(DistillError, match=f"{re.escape(str(root / 'val'))} not found"):
        make(root)


def test_no_classes(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    with pytest.raises(DistillError, match="train has no class sub-folders"):
        make(tmp_path)


def test_val_classes_must_match_train(root):
    shutil.rmtree(root / "val" / "bee")
    with pytest.raises(DistillError, match="the classes in .*val differ from those in .*train .e.g. bee"):
        make(root)


def test_class_without_images(root):
    for image in (root / "val" / "cat").iterdir():
        image.unlink()
    datamodule = make(root)
    with pytest.raises(DistillError, match=f"{re.escape(str(root / 'val'))}: .*cat"):
        datamodule.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": [0.5]}, "data.mean must have 3 values (R, G, B), got 1"),
        ({"std": [0.2, 0.0, 0.2]}, "data.std must be > 0"),
        ({"image_size": 0}, "data.image_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_key(root, kwargs, message):
    with pytest.raises(DistillError, match=re.escape(message)):
        ImageFolderDataModule(root=str(root), **kwargs)
