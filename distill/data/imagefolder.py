"""Images in class sub-folders (`root/{train,val[,test]}/<class>/*.jpg`), read by torchvision's ImageFolder."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from distill.data.base import DATASETS, ClassificationDataModule, Splits, check_at_least
from distill.errors import DistillError


def class_folders(split: Path) -> list[str]:
    """Sorted names of the sub-folders of `split`: the classes, in ImageFolder's order."""
    return sorted(entry.name for entry in os.scandir(split) if entry.is_dir())


@DATASETS.register("imagefolder")
class ImageFolderDataModule(ClassificationDataModule):
    """An ImageNet-style folder tree: `root/train/<class>/...`, `root/val/<class>/...`, optional `root/test/`.

    Without `test/`, testing uses `val/`. Images are loaded as RGB.

    Args:
        root: Folder holding train/ and val/ (and optionally test/), each with one sub-folder per class.
        image_size: Side of the square images fed to the model.
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        augment: RandomResizedCrop and horizontal flips on the training images (else resize + center crop).
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel standard deviation divided by after subtracting the mean.
        crop_scale: Range of the area fraction RandomResizedCrop keeps when augmenting (AMU uses [0.5, 1.0]).
        class_names: A text file with one readable class name per line, in the sorted order of the class folders
            (for zero-shot prompts: ImageNet's folders are WordNet ids); None: the folder names.
        shots: Train on this many images per class only, drawn by `shot_seed` (None: the whole training split).
        shot_seed: Seed of the few-shot draw.
    """

    def __init__(
        self,
        *,
        root: str = "data/imagefolder",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 2,
        augment: bool = True,
        mean: list[float] = [0.485, 0.456, 0.406],  # noqa: B006 (never mutated; copied below)
        std: list[float] = [0.229, 0.224, 0.225],  # noqa: B006
        crop_scale: list[float] = [0.08, 1.0],  # noqa: B006
        class_names: str | None = None,
        shots: int | None = None,
        shot_seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, shots=shots, shot_seed=shot_seed)
        check_at_least("image_size", image_size, 1)
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 3:
                raise DistillError(f"data.{name} must have 3 values (R, G, B), got {len(values)}")
        if min(std) <= 0:
            raise DistillError(f"data.std must be > 0, got {list(std)}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise DistillError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(crop_scale)}")
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.root = Path(root).expanduser().absolute()
        self.image_size = image_size
        self.in_chans = 3
        self.augment = augment
        self.mean = list(mean)
        self.std = list(std)
        self.classes = self._check_layout()
        self.num_classes = len(self.classes)
        self.class_names = self._class_names(class_names)  # for zero-shot prompts

    def _check_layout(self) -> list[str]:
        """The class names; raises a DistillError unless train/ and val/ exist with the same classes."""
        if not self.root.is_dir():
            raise DistillError(f"data.root: image folder {self.root} not found")
        for split in ("train", "val"):
            if not (self.root / split).is_dir():
                raise DistillError(f"data.root: {self.root / split} not found; expected {split}/<class>/<images>")
        classes = class_folders(self.root / "train")
        if not classes:
            raise DistillError(f"data.root: {self.root / 'train'} has no class sub-folders")
        for split in ("val", "test"):
            if (self.root / split).is_dir() and class_folders(self.root / split) != classes:
                other = set(class_folders(self.root / split))
                difference = sorted(other.symmetric_difference(classes))[:5]
                raise DistillError(
                    f"data.root: the classes in {self.root / split} differ from those in {self.root / 'train'} "
                    f"(e.g. {', '.join(difference)})"
                )
        return classes

    def _class_names(self, file: str | None) -> list[str]:
        if file is None:
            return [name.replace("_", " ") for name in self.classes]
        path = Path(file).expanduser()
        if not path.is_file():
            raise DistillError(f"data.class_names: no such file {path}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != len(self.classes):
            raise DistillError(f"data.class_names: {path} has {len(names)} names for {len(self.classes)} class folders")
        return names

    def _transform(self, train: bool) -> v2.Transform:
        if train and self.augment:
            geometry = [
                v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            geometry = [v2.Resize(int(self.image_size * 256 / 224), antialias=True), v2.CenterCrop(self.image_size)]
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(geometry + to_tensor + [v2.ToPureTensor()])

    def _folder(self, split: str, train: bool) -> ImageFolder:
        try:
            return ImageFolder(str(self.root / split), transform=self._transform(train))
        except FileNotFoundError as exc:  # a class folder without images
            raise DistillError(f"data.root: {self.root / split}: {' '.join(str(exc).split())}") from None

    def build_datasets(self) -> Splits:
        train = self._folder("train", train=True)
        val = self._folder("val", train=False)
        test = self._folder("test", train=False) if (self.root / "test").is_dir() else val
        return train, val, test
