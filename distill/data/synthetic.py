"""Small fake data sets in the real on-disk formats, for offline quickstarts, tests and benchmarks.

Each class gets its own mean colour plus noise, so a model can learn something from them.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _class_images(rng: np.random.Generator, labels: np.ndarray, num_classes: int, size: int) -> np.ndarray:
    """uint8 `[N, size, size, 3]`: a per-class colour plus uniform noise."""
    colours = rng.uniform(40, 215, size=(num_classes, 3))
    noise = rng.uniform(-40, 40, size=(len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_fake_cifar100(root: str | Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """Write `root/cifar-100-python/{train,test,meta}` laid out like the official files; returns that folder.

    Like the official (Python 2) files read with `encoding='bytes'`, the dicts have bytes keys.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, size=n)
        images = _class_images(rng, labels, 100, 32).transpose(0, 3, 1, 2)  # (N, 3, 32, 32)
        content = {
            b"filenames": [f"fake_{split}_{i}.png".encode() for i in range(n)],
            b"batch_label": f"fake {split} batch".encode(),
            b"fine_labels": [int(label) for label in labels],
            b"coarse_labels": [int(label) // 5 for label in labels],
            b"data": images.reshape(n, -1),  # (N, 3072), row-major CHW
        }
        _dump(content, folder / split)
    meta = {
        b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
        b"coarse_label_names": [f"superclass_{i:02d}".encode() for i in range(20)],
    }
    _dump(meta, folder / "meta")
    return folder


def _dump(content: dict, path: Path) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=4)  # protocol 2 would store bytes through _codecs.encode


def write_fake_imagefolder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: int = 4,
    size: int = 32,
    seed: int = 0,
    splits: Sequence[str] = ("train", "val"),
) -> Path:
    """Write `per_class` PNG images of `size`x`size` per class into `root/<split>/<class>/`; returns `root`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    labels = np.repeat(np.arange(len(classes)), per_class)
    for split in splits:
        images = _class_images(rng, labels, len(classes), size)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root
