"""Teachers whose weights come from an address: the lineage's published CIFAR-100 teachers (`teacher.checkpoint:
published`) and any checkpoint named by URL (`teacher.checkpoint: https://...`).

Each is fetched once into the teacher store (`<store>/<model>-<published|url>-<key of its address>/teacher.pt`),
checked (its checksum where one is given, and always that its state dict loads into the recipe's model), its
top-1 accuracy on the CIFAR-100 test split measured once, and recorded beside it in `source.json` (address,
sha256, accuracy). Later runs read the store. One process fetches while the others resolving the same teacher wait
for it (a lock beside the teacher).

mdistiller publishes the lineage's teachers (RepDistiller's `{'model': state_dict, ...}` files) in one archive,
`cifar_teachers.tar`, with no checksum; the archive is kept in `<store>/downloads/` so that the other teachers it
holds need no second download (delete it freely: a stored teacher does not need it).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from distill.data.cifar import CIFAR100DataModule, load_split, transforms
from distill.data.download import digest, ensure_online, extract_member, fetch
from distill.data.interface import DataSource
from distill.errors import DistillError
from distill.models import model_for_data
from distill.models.weights import load_weights
from distill.teachers.hints import MDISTILLER_TEACHERS, train_advice
from distill.teachers.store import TEACHER_FILE, claim

PUBLISHED = "published"  # the `checkpoint` value that asks for the lineage's published teacher of the model
MDISTILLER_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
URL_ENV = "DISTILL_TEACHERS_URL"  # a mirror of cifar_teachers.tar (tests point it at 127.0.0.1)
RECORD_FILE = "source.json"
DOWNLOADS = "downloads"


@dataclass(frozen=True)
class Remote:
    """Where a checkpoint is fetched from: the file at `url`, or its `member` when `url` is a tar archive."""

    url: str
    member: str | None = None
    sha256: str | None = None  # of the checkpoint file, where its publisher gives one
    label: str = ""  # how the printed line names the source

    @property
    def address(self) -> str:
        return f"{self.url} (member {self.member})" if self.member else self.url


def is_url(checkpoint: str) -> bool:
    return checkpoint.startswith(("https://", "http://"))


def published_member(model: str) -> str:
    return f"cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth"


def remote_of(checkpoint: str, sha256: str | None, model: str) -> Remote | None:
    """The address of a `checkpoint` setting that names one (None for a local path, or `published` for a model
    with no published teacher)."""
    if checkpoint == PUBLISHED:
        if model not in MDISTILLER_TEACHERS:
            return None
        url = os.environ.get(URL_ENV) or MDISTILLER_URL
        return Remote(url, published_member(model), None, "mdistiller cifar_teachers.tar")
    if is_url(checkpoint):
        return Remote(checkpoint, None, sha256.lower() if sha256 else None, checkpoint)
    return None


def stored_path(store: str, model: str, remote: Remote) -> Path:
    """Where the teacher fetched from `remote` is kept: keyed by its address, so another address is another entry."""
    key = hashlib.sha256(json.dumps([remote.url, remote.member]).encode()).hexdigest()[:12]
    kind = PUBLISHED if remote.member else "url"
    label = model.replace(":", "_").replace("/", "_")
    return Path(store).expanduser().resolve() / f"{label}-{kind}-{key}" / TEACHER_FILE


def file_name(url: str, fallback: str) -> str:
    name = Path(urlparse(url).path).name
    return name if name and name != TEACHER_FILE else fallback


def fetch_teacher(role: str, model: dict[str, Any], remote: Remote, weights: Path, data: DataSource) -> None:
    """Fetch the checkpoint at `remote` into the store as `weights`, checked, measured and recorded; nothing when
    it is stored already (by another process too: one fetches, the others wait). Raises `Unreachable` when the
    address cannot be read, DistillError when what it gives is not the teacher."""
    what = f"{role}.checkpoint"
    if remote.member is None:
        download = weights.with_name(file_name(remote.url, "download.pth"))
        fill = f"download {remote.url} to {download}"
    else:
        download = weights.parent.parent / DOWNLOADS / file_name(remote.url, "archive.tar")
        fill = f"put {remote.url} at {download} (it holds {remote.member}), or {train_advice(role, model['name'])}"
    if not download.is_file():  # refused before anything is written
        ensure_online(f"{what}: published {model['name']}" if remote.member else f"{what}: {remote.url}", fill)
    with claim(weights, f"fetching the {role} {model['name']}"):
        if weights.is_file():
            return
        fetch(remote.url, download, what=what, fill=fill)
        if remote.member is None:
            fetched = download
        else:
            fetched = extract_member(download, remote.member, weights.with_name("fetched.pth"), what)
        sha256 = checked(what, remote, fetched)
        teacher = fitted(role, model, remote, fetched, data)
        accuracy, images = measure_accuracy(teacher, data)
        record = {
            "model": dict(model),
            "url": remote.url,
            "member": remote.member,
            "sha256": sha256,
            "test_accuracy": accuracy,
            "test_images": images,
            "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_record(weights.with_name(RECORD_FILE), record)
        os.replace(fetched, weights)  # last: a stored teacher always has its record
    measured = (
        f"test accuracy {accuracy:.2f} %" if accuracy is not None else "test accuracy not measured (not CIFAR-100)"
    )
    print(f"distill: {role} {model['name']} ({remote.label}): {measured}, stored in {weights.parent}", flush=True)


def checked(what: str, remote: Remote, fetched: Path) -> str:
    """The file's sha256, which must be the published one where there is one (else the file is deleted)."""
    found = digest(fetched, "sha256")
    if remote.sha256 is not None and found != remote.sha256:
        fetched.unlink()
        raise DistillError(
            f"{what}: {remote.address} does not match its checksum: expected sha256 {remote.sha256}, found {found}; "
            "nothing was kept"
        )
    return found


def fitted(role: str, model: dict[str, Any], remote: Remote, fetched: Path, data: DataSource) -> torch.nn.Module:
    """The recipe's model with the fetched weights loaded: every key and shape must fit (else the file is
    deleted), the check that stands in for a checksum where none is published."""
    teacher = model_for_data(dict(model), data, f"{role}.model")
    try:
        load_weights(teacher, fetched, f"{role}.checkpoint")
    except DistillError as exc:
        fetched.unlink(missing_ok=True)
        reason = str(exc).split(f"{fetched} ", 1)[-1]
        raise DistillError(
            f"{role}.checkpoint: {remote.address} does not fit {role}.model {model['name']}: {reason}; "
            "nothing was stored"
        ) from None
    return teacher


def measure_accuracy(model: torch.nn.Module, data: DataSource, batch: int = 500) -> tuple[float | None, int]:
    """Top-1 accuracy in % on the CIFAR-100 test split and the number of images (None, 0 for other data)."""
    if not isinstance(data, CIFAR100DataModule):
        return None, 0
    images, labels = load_split(data.folder / "test")
    normalize = transforms(augment=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch):
            logits = model(normalize(images[start : start + batch]).to(device))  # (B, 100)
            correct += int((logits.argmax(1).cpu() == labels[start : start + batch]).sum())
    model.cpu()
    return 100.0 * correct / max(len(labels), 1), len(labels)


def write_record(path: Path, record: dict[str, Any]) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    scratch.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(scratch, path)


def stored_record(weights: Path) -> dict[str, Any] | None:
    """What `fetch_teacher` recorded beside a stored teacher (None for one trained or put there by hand)."""
    path = weights.with_name(RECORD_FILE)
    return json.loads(path.read_text()) if path.is_file() else None
