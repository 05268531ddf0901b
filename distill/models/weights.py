"""Reading model weights safely (weights_only) from the checkpoint formats users have, and writing them atomically."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint can hold tensors and plain data, never code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DistillError(f"{what}: file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling junk raises many kinds (UnpicklingError, EOFError, struct.error...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.split(". ")[0].rstrip(".")  # torch goes on with advice, such as loading with weights_only off
        raise DistillError(f"{what}: cannot read {path} (truncated, corrupt or not a weights file): {reason}") from None
    if not isinstance(data, dict):
        raise DistillError(f"{what}: {path} holds a {type(data).__name__}, not a state dict")
    return data


def extract_state_dict(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Model weights from a distill/Lightning checkpoint, `{'model': ...}`, `{'state_dict': ...}` or a state dict."""
    if "state_dict" in data and isinstance(data["state_dict"], dict):
        state = data["state_dict"]
        if any(k.startswith("student.") for k in state):  # a distill checkpoint: the student is the model
            return {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    elif "model" in data and isinstance(data["model"], dict):
        state = data["model"]
    else:
        state = data
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load weights into `model`, with one-line errors for a wrong architecture or class count."""
    state = extract_state_dict(read_checkpoint(path, what))
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise DistillError(
                f"{what}: {path} does not fit the model: '{key}' has shape {list(value.shape)} in the file "
                f"but {list(own[key].shape)} in the model (different architecture or number of classes?)"
            )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. '{unexpected[0]}')")
        raise DistillError(f"{what}: {path} is for another architecture: {', '.join(parts)}")
    model.load_state_dict(state)


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are owner-only (0600), and a shared teacher store must stay readable.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
