"""A file server on 127.0.0.1 standing in for every download in the tests, and archives in the real layouts.

The server honours Range requests (or ignores them, to stand in for servers that do), can cut its first responses
short, serve other bytes than the file's, and wait before answering (so that two clients overlap); it records each
request's path and Range header.
"""

from __future__ import annotations

import io
import multiprocessing
import re
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from distill.data.synthetic import write_fake_cifar100


@dataclass
class Served:
    data: bytes
    ignore_range: bool = False
    cuts: int = 0  # the next `cuts` responses stop after `cut_at` bytes
    cut_at: int = 0
    delay: float = 0.0  # seconds before each answer


class FileServer:
    """`with FileServer() as server: url = server.add("name", data)`; `server.requests` lists (name, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def add(self, name: str, data: bytes, **behaviour: object) -> str:
        self.files[name] = Served(data, **behaviour)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def count(self, name: str) -> int:
        return sum(1 for served, _ in self.requests if served == name)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                asked = self.headers.get("Range")
                with server.lock:
                    server.requests.append((name, asked))
                    served = server.files.get(name)
                    cut = served is not None and served.cuts > 0
                    if cut:
                        served.cuts -= 1
                if served is None:
                    self.send_error(404)
                    return
                time.sleep(served.delay)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", asked or "")
                if match and not served.ignore_range:
                    start = int(match.group(1))
                    if start >= len(served.data):
                        self.send_error(416)
                        return
                body = served.data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(served.data) - 1}/{len(served.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: served.cut_at] if cut else body)  # cut: the connection closes early

        return Handler


def tar_bytes(files: dict[str, bytes], gzip: bool = False) -> bytes:
    """A tar (or tar.gz) archive holding `files` by member name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def cifar_archive(folder: Path, n_train: int = 32, n_test: int = 16, seed: int = 0) -> bytes:
    """cifar-100-python.tar.gz as the official one is laid out (`cifar-100-python/{train,test,meta}`), small."""
    written = write_fake_cifar100(folder, n_train=n_train, n_test=n_test, seed=seed)
    return tar_bytes({f"cifar-100-python/{p.name}": p.read_bytes() for p in sorted(written.iterdir())}, gzip=True)


def checkpoint_bytes(state: dict[str, torch.Tensor], **extra: object) -> bytes:
    """A checkpoint file in the lineage's format: `{'model': state_dict, ...}`."""
    buffer = io.BytesIO()
    torch.save({"model": state, **extra}, buffer)
    return buffer.getvalue()


def teachers_archive(checkpoints: dict[str, bytes]) -> bytes:
    """cifar_teachers.tar as mdistiller publishes it: `cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth`."""
    return tar_bytes(
        {f"cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth": data for model, data in checkpoints.items()}
    )


def run_in_processes(target: Callable[..., Any], arguments: list[tuple[Any, ...]], timeout: float = 120) -> list[Any]:
    """`target(*args)` in one forked process per argument tuple, all at once; their results in order. A process
    that fails fails the caller with its error. Forked (not spawned: no second import of torch, and the test's
    monkeypatches hold there too), each computing on one thread, as DataLoader workers do after a fork."""
    context = multiprocessing.get_context("fork")
    with context.Pool(len(arguments), initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = [pool.apply_async(target, args) for args in arguments]
        return [result.get(timeout) for result in pending]


def prepare_cifar(root: str) -> int:
    """Prepare (download if missing) CIFAR-100 under `root` in this process; the training images it then reads."""
    from distill.data import CIFAR100DataModule

    datamodule = CIFAR100DataModule(root=root, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return len(datamodule.train_set)
