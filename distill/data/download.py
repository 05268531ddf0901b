"""Downloads that survive interruption and concurrency: a file arrives whole, checked, or not at all.

A download is written to `<dest>.part`, resumed by an HTTP Range request when the server honours one (restarted
from zero when it does not), checked against a checksum when one is known, then renamed into place. Archives are
extracted into a temporary folder beside their destination and renamed into place, so an interrupted extraction
never leaves a folder that looks complete. A file lock beside the destination lets one process do the work while
the others wait for it and then find it done.

`DISTILL_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) switches every download off: the error then names the file or folder
to fill and the address to fetch it from.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from distill.errors import DistillError

OFFLINE_FLAG = "DISTILL_OFFLINE"
ATTEMPTS = 3  # an interrupted transfer is resumed this many times within one call
CHUNK = 1 << 20


class Unreachable(DistillError):
    """The address could not be read (downloads switched off, no network, an HTTP error, a transfer cut short):
    what the caller may replace by another source. A checksum mismatch is not one: the address answered wrongly."""


def offline_flag() -> str | None:
    """The environment variable that switches downloads off, or None when they are on."""
    return next(
        (
            flag
            for flag in (OFFLINE_FLAG, "HF_HUB_OFFLINE")
            if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on")
        ),
        None,
    )


def ensure_online(what: str, fill: str) -> None:
    """Refuse, before anything is written, a download the environment switched off."""
    flag = offline_flag()
    if flag is not None:
        raise Unreachable(f"{what}: not found and downloads are off ({flag}=1): {fill}")


def temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{suffix}"


@contextmanager
def file_lock(path: Path, waiting_for: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if needed) for the block; says once what it waits for when
    another process holds it. The lock file stays: removing it would race with a process about to lock it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 (closed by the with below; opening is what may fail)
    except OSError as exc:
        raise DistillError(f"cannot write {path.parent} ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"distill: waiting for another process to finish {waiting_for} ({path})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def digest(path: Path, algorithm: str) -> str:
    hashed = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            hashed.update(block)
    return hashed.hexdigest()


def fetch(url: str, dest: Path, *, what: str, fill: str, checksum: tuple[str, str] | None = None) -> Path:
    """`dest`, downloaded from `url` unless it is there already; `checksum` is (algorithm, hex digest), e.g.
    ('md5', ...). `what` names the thing in errors and `fill` says how to provide it by hand."""
    if dest.is_file():  # fetched before, or put there by hand
        return dest
    ensure_online(what, fill)
    with file_lock(dest.with_name(f".{dest.name}.lock"), f"downloading {url}"):
        if dest.is_file():  # another process fetched it while this one waited
            return dest
        part = dest.with_name(dest.name + ".part")
        print(f"distill: downloading {url} to {dest}", flush=True)
        transfer(url, part, what, fill)
        if checksum is not None:
            algorithm, expected = checksum
            found = digest(part, algorithm)
            if found != expected.lower():
                part.unlink()
                raise DistillError(
                    f"{what}: {url} does not match its checksum: expected {algorithm} {expected}, found {found}; "
                    f"nothing was kept"
                )
        os.replace(part, dest)
    return dest


def transfer(url: str, part: Path, what: str, fill: str) -> None:
    """Complete `part` from `url`, resuming a transfer cut short up to ATTEMPTS times. The part file is kept after
    a failure so that the next run resumes it."""
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            if receive(url, part):
                return
            reason = "the transfer ended early"
        except HTTPError as exc:
            raise Unreachable(f"{what}: cannot download {url} (HTTP {exc.code} {exc.reason}): {fill}") from None
        except (URLError, OSError, http.client.HTTPException) as exc:
            reason = " ".join(str(getattr(exc, "reason", exc) or type(exc).__name__).split())
            if not part.exists() or part.stat().st_size == 0:
                raise Unreachable(f"{what}: cannot download {url} ({reason}): {fill}") from None
        time.sleep(0.2 * attempt)
    raise Unreachable(
        f"{what}: the download of {url} was cut short {ATTEMPTS} times ({reason}); run again to resume it from "
        f"{part}, or {fill}"
    )


def receive(url: str, part: Path, timeout: float = 60.0) -> bool:
    """One request: the rest of the file after the bytes `part` holds (Range), or the whole file when the server
    ignores Range. True when the response arrived in full."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "distill", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code != 416 or not start:
            raise
        part.unlink()  # the part is not a prefix this server can continue: start over
        return receive(url, part, timeout)
    with response:
        resumed = (
            start and response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {start}-")
        )
        length = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as out:  # a 200 answer holds the whole file: start over
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
    return length is None or received >= int(length)


def extract_folder(archive: Path, folder: Path, what: str) -> None:
    """Extract `archive`, whose top folder is named `folder.name`, into `folder.parent`: the folder appears whole
    or not at all (into an existing folder, only the files it lacks are moved)."""
    scratch = temporary_name(folder, "extracting")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")  # "data": no absolute paths, links out or device files
        extracted = scratch / folder.name
        if not extracted.is_dir():
            raise DistillError(f"{what}: {archive} holds no folder {folder.name}")
        if not folder.exists():
            os.replace(extracted, folder)
            return
        for item in extracted.iterdir():
            if not (folder / item.name).exists():
                os.replace(item, folder / item.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DistillError(f"{what}: cannot extract {archive} ({exc}); delete it and run again") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extract_member(archive: Path, member: str, dest: Path, what: str) -> Path:
    """The file `member` of the tar `archive` written to `dest` (through a temporary file beside it)."""
    scratch = temporary_name(dest, "extracting")
    try:
        with tarfile.open(archive) as tar:
            source = tar.extractfile(find_member(tar.getnames(), member, f"{what}: {archive}"))
            if source is None:
                raise DistillError(f"{what}: {member} in {archive} is not a file")
            with source, open(scratch, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        os.replace(scratch, dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DistillError(f"{what}: cannot read {member} from {archive} ({exc}); delete it and run again") from None
    finally:
        scratch.unlink(missing_ok=True)
    return dest


def find_member(names: list[str], member: str, where: str) -> str:
    """The archive's name for `member`: itself (a leading `./` aside) or, under another top folder than the one
    expected, the one name ending with the same last two parts (the top folder a publisher used is known only from
    its unpacking instructions)."""
    exact = [name for name in names if name.removeprefix("./") == member]
    tail = "/" + "/".join(member.split("/")[-2:])
    found = exact or [name for name in names if name.endswith(tail)]
    if len(found) != 1:
        raise DistillError(f"{where} has no member {member}")
    return found[0]
