"""Image classification data modules, registered by name for recipes (`data: {name: digits}`)."""

from __future__ import annotations

from typing import Any

from distill.data.base import DATASETS, ClassificationDataModule, TensorImageDataset
from distill.data.captions import CaptionsDataModule
from distill.data.cifar import CIFAR100DataModule
from distill.data.digits import DigitsDataModule
from distill.data.image_text import ImageTextDataModule
from distill.data.imagefolder import ImageFolderDataModule
from distill.data.preference import PreferenceDataModule
from distill.data.text import CausalLMDataModule


def create_datamodule(name: str, **kwargs: Any) -> ClassificationDataModule:
    """The data module registered as `name` (e.g. 'digits', 'cifar100', 'imagefolder'), built with `kwargs`."""
    return DATASETS.get(name)(**kwargs)


__all__ = [
    "DATASETS",
    "CIFAR100DataModule",
    "CaptionsDataModule",
    "CausalLMDataModule",
    "ClassificationDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "PreferenceDataModule",
    "TensorImageDataset",
    "create_datamodule",
]
