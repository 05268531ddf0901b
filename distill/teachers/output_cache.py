"""A teacher-output cache shared across runs: the teacher's logits for every (epoch, sample) view, computed once.

Runs that distill the same teacher on the same data and views (other losses, other students, other run seeds with
the same `data.augment_seed`) read the teacher's outputs from here instead of running it. Each epoch has three .npy
files, opened memory-mapped: `values` (the top-k logits, plus the log-sum-exp of all when k < C), `indices` (their
classes) and `filled` (which samples are written). `meta.json` holds everything that determines the outputs; a
cache whose meta differs from the run's is refused, never mixed.

With k < C the logits are rebuilt with the top k exact and the remaining probability spread evenly over the other
classes (the softmax at T = 1 keeps the top-k probabilities exactly); with k = C they are exact.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import DistillError

META_FILE = "meta.json"
LOCK_FILE = ".lock"
RESIDENT_ELEMENTS = 1 << 26  # an epoch's logits held on the accelerator (256 MiB in fp32); larger sets read per batch


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class CacheFolder:
    """A folder of memory-mapped arrays whose `meta.json` holds everything that determines them: created with the
    meta on first use, refused when an existing folder's meta differs, locked between the processes of a run."""

    def __init__(self, folder: str | Path, meta: dict[str, Any], setting: str = "teacher.cache") -> None:
        self.folder = Path(folder).expanduser()
        self.setting = setting
        self.meta = meta
        self.created = False  # whether this run created the folder's meta (a new cache)
        self._check_or_create()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive between the processes of a run (ranks of one node) that open the cache at the same time."""
        with open(self.folder / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _check_or_create(self) -> None:
        ours = {META_FILE, LOCK_FILE, f"{Path(META_FILE).stem}.tmp"}  # what a cache being created holds
        foreign = self.folder.is_dir() and not (self.folder / META_FILE).is_file()
        if foreign and any(p.name not in ours for p in self.folder.iterdir()):  # someone's folder, not a cache
            raise DistillError(f"{self.setting}: {self.folder} exists, is not empty and has no {META_FILE}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DistillError(f"{self.setting}: cannot create {self.folder}: {exc.strerror}") from None
        with self._locked():
            self._check_or_write_meta()

    def _check_or_write_meta(self) -> None:
        meta_path = self.folder / META_FILE
        expected = json.loads(json.dumps(self.meta, sort_keys=True, default=str))
        if meta_path.is_file():
            try:
                stored = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                raise DistillError(f"{self.setting}: cannot read {meta_path}: {exc}") from None
            if stored != expected:
                keys = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
                raise DistillError(
                    f"{self.setting}: {self.folder} holds the outputs of another setup (differs in: "
                    f"{', '.join(keys)}); give another {self.setting} folder or delete this one"
                )
            return
        temporary = meta_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(expected, indent=2, sort_keys=True))
        os.replace(temporary, meta_path)
        self.created = True

    def _open(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """The array file `name` of the folder, memory-mapped for reading and writing; created (zeros) if missing."""
        path = self.folder / name
        if path.is_file():
            array = np.load(path, mmap_mode="r+")
            if array.shape != shape or array.dtype != dtype:
                raise DistillError(f"{self.setting}: {path} is {array.dtype}{list(array.shape)}, expected {shape}")
            return array
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


class TeacherCache(CacheFolder):
    """Teacher logits per (epoch, sample index) for `size` samples and `num_classes` classes, keeping `top_k`.

    Args:
        folder: where the cache lives (created if missing).
        meta: what determines the teacher's outputs (teacher weights, data, views, precision...): must equal the
            stored meta of an existing cache.
        size: number of samples (indices are in [0, size)).
        num_classes: C.
        top_k: logits kept per sample (None or C: all of them).
        resident: read a complete epoch whole onto the device of the batches' indices, once, and each batch's
            logits from there (one gather; None: when the indices are on an accelerator and the epoch's logits are
            at most RESIDENT_ELEMENTS). Otherwise each batch is read from the files on the host: its indices copied
            to the host and its logits to the device, two waits for the device's queue a step.
    """

    def __init__(
        self,
        folder: str | Path,
        meta: dict[str, Any],
        size: int,
        num_classes: int,
        top_k: int | None,
        resident: bool | None = None,
    ) -> None:
        self.size, self.num_classes = size, num_classes
        self.top_k = num_classes if top_k is None else top_k
        if not 1 <= self.top_k <= num_classes:
            raise DistillError(f"teacher.cache_top_k must be in [1, {num_classes}] (the class count), got {top_k}")
        super().__init__(folder, {**meta, "size": size, "num_classes": num_classes, "top_k": self.top_k})
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.resident = resident
        self._resident: tuple[tuple[int, str], torch.Tensor] | None = None  # ((epoch, device), [size, C] logits)

    @property
    def exact(self) -> bool:
        return self.top_k == self.num_classes

    def _files(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            width = self.top_k + (0 if self.exact else 1)  # + the log-sum-exp of all logits
            index_dtype = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
            specs = (("values", np.float32, (self.size, width)), ("indices", index_dtype, (self.size, self.top_k)))
            with self._locked():  # one process creates an epoch's files, the others open them
                arrays = [self._open(f"epoch_{epoch:04d}_{name}.npy", dtype, shape) for name, dtype, shape in specs]
                arrays.append(self._open(f"epoch_{epoch:04d}_filled.npy", np.bool_, (self.size,)))
            self._epochs[epoch] = tuple(arrays)  # type: ignore[assignment]
        return self._epochs[epoch]

    def read(self, epoch: int, indices: torch.Tensor) -> torch.Tensor | None:
        """`[B, C]` float32 logits of the samples `indices` in `epoch` (on the indices' device when the epoch is
        resident, else on the CPU), or None unless all of them are cached."""
        resident = self.resident_epoch(epoch, indices.device)
        if resident is not None:
            return resident[indices]
        values, classes, filled = self._files(epoch)
        rows = indices.detach().cpu().numpy()
        if not filled[rows].all():
            return None
        stored = torch.from_numpy(np.asarray(values[rows]))  # fancy indexing already copied the rows
        return self.rebuild(stored, torch.from_numpy(classes[rows].astype(np.int64)))

    def resident_epoch(self, epoch: int, device: torch.device) -> torch.Tensor | None:
        """All `[size, C]` logits of `epoch` on `device`, read once, if it is to be resident (see the class) and
        every sample of it is cached; else None."""
        wanted = self.resident if self.resident is not None else device.type != "cpu"
        if not wanted or self.size * self.num_classes > RESIDENT_ELEMENTS:
            return None
        key = (epoch, str(device))
        if self._resident is not None and self._resident[0] == key:
            return self._resident[1]
        values, classes, filled = self._files(epoch)
        if not filled.all():
            return None
        logits = self.rebuild(torch.from_numpy(np.asarray(values)), torch.from_numpy(classes.astype(np.int64)))
        self._resident = key, logits.to(device)  # the previous epoch's is let go
        return self._resident[1]

    def rebuild(self, stored: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """`[B, C]` logits from the stored rows (`[B, k]` values, plus the log-sum-exp when k < C) and their classes."""
        if self.exact:
            return torch.empty(len(stored), self.num_classes).scatter_(1, top, stored)
        kept, lse = stored[:, :-1], stored[:, -1:]
        rest_mass = (1 - (kept - lse).exp().sum(dim=1, keepdim=True)).clamp(min=1e-12)
        rest = lse + rest_mass.log() - math.log(self.num_classes - self.top_k)
        return rest.expand(-1, self.num_classes).clone().scatter_(1, top, kept)

    def write(self, epoch: int, indices: torch.Tensor, logits: torch.Tensor) -> None:
        """Store the teacher's `[B, C]` logits of the samples `indices` in `epoch`."""
        values, classes, filled = self._files(epoch)
        logits = logits.detach().float().cpu()
        kept, top = logits.topk(self.top_k, dim=1)
        rows = indices.detach().cpu().numpy()
        if self.exact:
            values[rows] = kept.numpy()
        else:
            values[rows] = torch.cat([kept, logits.logsumexp(dim=1, keepdim=True)], dim=1).numpy()
        classes[rows] = top.numpy()
        filled[rows] = True

    def flush(self) -> None:
        for arrays in self._epochs.values():
            for array in arrays:
                array.flush()

    def complete_epochs(self) -> list[int]:
        """The epochs whose every sample is cached (on disk)."""
        done = []
        for path in sorted(self.folder.glob("epoch_*_filled.npy")):
            if np.load(path, mmap_mode="r").all():
                done.append(int(path.name.split("_")[1]))
        return done
