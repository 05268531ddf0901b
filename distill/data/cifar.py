"""CIFAR-100 read from the official "python version" files, with the augmentation of the KD benchmark."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torchvision.transforms import v2

from distill.data.base import DATASETS, ClassificationDataModule, Splits, TensorImageDataset
from distill.data.device_images import IndexedImages, device_batch, source_of
from distill.data.download import ensure_online, extract_folder, fetch, file_lock
from distill.data.replay_augment import CropFlip
from distill.errors import DistillError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
URL_ENV = "DISTILL_CIFAR100_URL"  # a mirror of the same archive (its MD5 is checked all the same)
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published beside the archive on the dataset's page
FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
NUM_CLASSES = 100
MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled numpy array needs, under their numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # Pickle protocol 5 (the default from Python 3.14) stores arrays through _frombuffer,
        # which only wraps a byte buffer; allowed so that files re-saved by newer Pythons load.
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global (no code can run)."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # latin1: the official files come from Python 2, and numpy needs latin1 to read their arrays.
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise DistillError(f"refusing to unpickle {module}.{name} from {self.path}")
        return self.allowed[(module, name)]


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (the files have bytes or str keys, by Python version)."""
    try:
        with open(path, "rb") as file:
            content = RestrictedUnpickler(file, path).load()
    except DistillError:
        raise
    except Exception as exc:  # a truncated or foreign file: say which one, in one line
        reason = " ".join(str(exc).split())
        raise DistillError(f"cannot read {path}: {type(exc).__name__}: {reason}") from None
    if not isinstance(content, dict):
        raise DistillError(f"{path} does not hold a dict (got {type(content).__name__}); is it a CIFAR-100 file?")
    return {_text(key): value for key, value in content.items()}


def _field(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise DistillError(f"{path} has no '{key}' entry; is it a CIFAR-100 file?")
    return content[key]


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 `[N, 3, 32, 32]` and labels int64 `[N]` of one split file, checked."""
    content = load_pickle(path)
    data = np.asarray(_field(content, "data", path))
    labels = np.asarray(_field(content, "fine_labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DistillError(f"{path}: 'data' must be uint8 of shape [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),):
        raise DistillError(f"{path}: {len(data)} images but {labels.size} fine_labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DistillError(f"{path}: fine_labels must be integers in [0, {NUM_CLASSES})")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are CHW, row-major
    return images, torch.from_numpy(labels.astype(np.int64))


def load_class_names(path: Path) -> list[str]:
    names = [_text(name) for name in _field(load_pickle(path), "fine_label_names", path)]
    if len(names) != NUM_CLASSES:
        raise DistillError(f"{path}: expected {NUM_CLASSES} fine_label_names, got {len(names)}")
    return names


def transforms(augment: bool) -> v2.Transform:
    """uint8 `[3, 32, 32]` -> normalized float32; with `augment`, RandomCrop(32, pad 4) + horizontal flip first."""
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=MEAN, std=STD)]
    augmentation = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if augment else []
    return v2.Compose(augmentation + to_float)


@DATASETS.register("cifar100")
class CIFAR100DataModule(ClassificationDataModule):
    """CIFAR-100 (50,000 train / 10,000 test images of 32x32, 100 classes) from `<root>/cifar-100-python`.

    Validation uses the official test split, as the KD papers' CIFAR-100 protocol does.

    Args:
        root: Folder holding cifar-100-python/{train,test,meta}.
        download: Download the official archive when the files are missing (its MD5 checked), extract it into
            root and delete it; one process of a node downloads while the others wait for it.
        batch_size: Samples per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        augment: RandomCrop(32, padding=4) and horizontal flips on the training images.
        shots: Train on this many images per class only, drawn by `shot_seed` (None: the whole training split).
        shot_seed: Seed of the few-shot draw.
        on_device: Keep the whole uint8 dataset on the accelerator and augment and normalize whole batches there;
            training batches are then `(images, labels, indices)` and their views replayable (see augment_seed).
        augment_seed: on_device: the views of sample i in epoch e depend only on (augment_seed, e, i), not on the
            run's seed, so runs with other seeds see the same views (in another order) and can share a teacher cache.
        channels_last: on_device: give the batches in channels_last memory format.
    """

    can_hold_on_device = True

    def __init__(
        self,
        *,
        root: str = "data/cifar100",
        download: bool = True,
        batch_size: int = 64,
        num_workers: int = 2,
        augment: bool = True,
        shots: int | None = None,
        shot_seed: int = 0,
        on_device: bool = False,
        augment_seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, shots=shots, shot_seed=shot_seed)
        self.on_device, self.augment_seed, self.channels_last = on_device, augment_seed, channels_last
        self.augmentation = CropFlip(MEAN, STD, size=32, padding=4, flip=True)
        self.num_classes = NUM_CLASSES
        self.in_chans = 3
        self.image_size = 32
        self.root = Path(root).expanduser().absolute()
        self.download = download
        self.augment = augment
        self._class_names: list[str] | None = None

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _missing(self) -> bool:
        return not all((self.folder / name).is_file() for name in ("train", "test"))

    def _where(self) -> str:
        return f"{self.folder}/{{train,test}}"

    def prepare_data(self) -> None:
        """Download when allowed and needed. Lightning calls this on one process per node; every process calls it
        again before reading the files, and a lock lets one of them download while the others wait."""
        if not self._missing() or not self.download:
            return
        url = os.environ.get(URL_ENV) or URL
        what, fill = f"CIFAR-100 ({self.folder})", f"download {url} and extract it into {self.root}"
        archive = self.root / ARCHIVE
        if not archive.is_file():  # an archive put there by hand is extracted offline too
            ensure_online(what, fill)
        with file_lock(self.root / f".{FOLDER}.lock", "the CIFAR-100 download"):
            if not self._missing():  # another process downloaded it while this one waited
                return
            fetch(url, archive, what=what, fill=fill, checksum=("md5", MD5))
            extract_folder(archive, self.folder, what)
            archive.unlink()  # 160 MB read once: the extracted files are what runs read

    def _check_files(self) -> None:
        self.prepare_data()
        if self._missing():
            raise DistillError(
                f"CIFAR-100 not found: expected {self._where()}; set data.download=true, "
                f"or download {os.environ.get(URL_ENV) or URL} and extract it into {self.root}"
            )

    @property
    def class_names(self) -> list[str]:
        """The 100 fine class names, from the `meta` file."""
        if self._class_names is None:
            self._check_files()
            self._class_names = load_class_names(self.folder / "meta")
        return self._class_names

    def build_datasets(self) -> Splits:
        self._check_files()
        if self.on_device:
            train, test = (IndexedImages(*load_split(self.folder / name)) for name in ("train", "test"))
            return train, test, test
        train = TensorImageDataset(*load_split(self.folder / "train"), transforms(self.augment))
        # val = test = the official test split: the protocol the KD literature reports on.
        test = TensorImageDataset(*load_split(self.folder / "test"), transforms(augment=False))
        return train, test, test

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """on_device: `(indices, labels)` -> `(images, labels, indices)` in training, `(images, labels)` else."""
        if not self.on_device:
            return batch
        indices, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        split = self.train_set if training else self.val_set
        epoch = trainer.current_epoch if trainer is not None else 0
        augment = training and self.augment
        x = device_batch(
            source_of(split), indices, self.augmentation, augment, self.augment_seed, epoch, self.channels_last
        )
        return (x, labels, indices) if training else (x, labels)
