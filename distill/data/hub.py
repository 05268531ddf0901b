"""The Hugging Face Hub as distill reads it: whether it is switched off or reachable, whether an `hf:` name is a
local folder, and which version of a repository a run read (the commit its name and revision resolved to).

A branch such as `main` moves; the commit does not. Runs record the commit of every `hf:` model, tokenizer and
dataset they read (in their checkpoints' sources and `sources.json`), evaluation of a finished run reads the same
commits, and the language-model teacher cache is keyed by the teacher's commit, so a teacher updated on the Hub
under the same name is a different teacher.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

COMMIT = re.compile(r"[0-9a-f]{40}")
RepoType = Literal["model", "dataset"]


def hub_offline(*flags: str) -> bool:
    """Whether the environment switches the Hugging Face Hub off (HF_HUB_OFFLINE, or any of `flags`), read at each
    call: huggingface_hub reads it once, at import."""
    return any(
        os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in ("HF_HUB_OFFLINE", *flags)
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint (HF_ENDPOINT, default huggingface.co) opens in `timeout`."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def is_local(name_or_path: str) -> bool:
    """Whether an `hf:` name is a folder on this machine rather than a Hub repository."""
    path = Path(name_or_path).expanduser()
    return path.exists() or path.is_absolute() or name_or_path.startswith((".", "~"))


def split_revision(name: str) -> tuple[str, str | None]:
    """`org/name@revision` -> (`org/name`, `revision`); a name without `@`, or a local folder, has no revision."""
    if "@" not in name or is_local(name):
        return name, None
    repo, revision = name.rsplit("@", 1)
    return repo, revision or None


def hub_commit(repo_id: str, revision: str | None = None, repo_type: RepoType = "model") -> str | None:
    """The commit `repo_id` at `revision` (default: its main branch) resolves to: the revision itself when it is a
    commit, else the local Hub cache's record of the branch or tag (written when the files were downloaded), else
    the Hub's answer where it can be reached; None for a local folder or when neither knows."""
    if revision is not None and COMMIT.fullmatch(revision):
        return revision
    if is_local(repo_id):
        return None
    return _cached_commit(repo_id, revision, repo_type) or _remote_commit(repo_id, revision, repo_type)


def _cached_commit(repo_id: str, revision: str | None, repo_type: RepoType) -> str | None:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = folder / "refs" / (revision or "main")
    try:
        text = ref.read_text().strip()
    except OSError:
        return None
    return text if COMMIT.fullmatch(text) else None


def _remote_commit(repo_id: str, revision: str | None, repo_type: RepoType) -> str | None:
    if hub_offline("HF_DATASETS_OFFLINE" if repo_type == "dataset" else "TRANSFORMERS_OFFLINE") or not hub_reachable():
        return None
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10)
    except Exception:  # unreachable, unknown, gated: the run records that the commit is not known
        return None
    return getattr(info, "sha", None)


def hub_origin(name_or_path: str, revision: str | None = None, repo_type: RepoType = "model") -> dict[str, Any]:
    """What a run records of one `hf:` repository: its name, the revision asked for and the commit it resolved to;
    or, for a local folder, the folder."""
    name, suffix = split_revision(name_or_path)
    revision = revision or suffix
    if is_local(name):
        return {"folder": str(Path(name).expanduser().resolve())}
    return {
        "repo": name,
        "type": repo_type,
        "revision": revision or "main",
        "commit": hub_commit(name, revision, repo_type),
    }
