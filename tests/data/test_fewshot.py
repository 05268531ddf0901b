"""Few-shot training sets: k per class by seed, nested as k grows, wired into the image data modules."""

import pytest
import torch

from distill.data import create_datamodule
from distill.data.fewshot import few_shot_indices
from distill.errors import DistillError


def test_k_per_class_by_seed_and_nested_as_k_grows():
    labels = torch.arange(60) % 3
    two, four, other = (few_shot_indices(labels, k, seed=s, num_classes=3) for k, s in ((2, 5), (4, 5), (2, 6)))
    assert torch.bincount(labels[four], minlength=3).tolist() == [4, 4, 4]
    assert set(two.tolist()) <= set(four.tolist()) and set(two.tolist()) != set(other.tolist())
    assert torch.equal(two, few_shot_indices(labels, 2, seed=5, num_classes=3))  # same seed, same shots
    with pytest.raises(DistillError, match="class 2 has 1 training samples, fewer than 2"):
        few_shot_indices(torch.tensor([0, 0, 1, 1, 2]), 2, seed=0, num_classes=3)


def test_digits_train_on_the_shots_and_evaluate_on_the_full_splits():
    full, shots = create_datamodule("digits"), create_datamodule("digits", shots=3, shot_seed=2)
    full.setup(), shots.setup()
    assert len(shots.train_set) == 30 and torch.bincount(shots.train_set.labels).tolist() == [3] * 10
    assert len(shots.val_set) == len(full.val_set) and len(shots.test_set) == len(full.test_set)
    images, label = shots.train_set[0]
    assert images.shape == (1, 8, 8) and label == int(shots.train_set.labels[0])
    assert shots.class_names[3] == "three"
    with pytest.raises(DistillError, match="data.shots must be >= 1"):
        create_datamodule("digits", shots=0)


def test_imagefolder_reads_class_names_from_a_file_and_checks_the_crop_scale(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for name in ("n01", "n02"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "a.png")
    names = tmp_path / "names.txt"
    names.write_text("tench\ngoldfish\n")
    data = create_datamodule("imagefolder", root=str(tmp_path), class_names=str(names), image_size=8)
    assert data.class_names == ["tench", "goldfish"]
    assert create_datamodule("imagefolder", root=str(tmp_path)).class_names == ["n01", "n02"]
    names.write_text("tench\n")
    with pytest.raises(DistillError, match="has 1 names for 2 class folders"):
        create_datamodule("imagefolder", root=str(tmp_path), class_names=str(names))
    with pytest.raises(DistillError, match="data.crop_scale"):
        create_datamodule("imagefolder", root=str(tmp_path), crop_scale=[0.8, 0.5])
