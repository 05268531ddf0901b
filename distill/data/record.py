"""What a run's models took from its data, kept as plain data in the run's checkpoints: the sizes each model was
built with (`model_args`), the tokenizer itself and the chat template, the image size. With it a finished run's
student is rebuilt from its checkpoint alone (`distill export`), without reading the data again: the data may
live on the Hub, be moved or deleted, and a `bpe:` tokenizer was trained on it.

The tokenizer is kept whole, not by name: a `bpe:` tokenizer exists only in a cache folder, and an `hf:` one may be
a local folder that moves. A Hugging Face tokenizer's files (`tokenizer.json` and its configuration) are a few
megabytes at most, small beside the weights of the checkpoints they travel in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from distill.data.interface import ClassData, DataSource, TokenData
from distill.data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer
from distill.errors import DistillError

ROLES = ("student", "teacher")


def data_record(data: DataSource) -> dict[str, Any]:
    """What the models of a run on `data` were built from: `model_args` per role, and for token data the tokenizer
    (`tokenizer_record`) and the chat template the run rendered conversations with (None: the tokenizer's own, or
    no conversations); for images the image size."""
    record: dict[str, Any] = {"model_args": {role: dict(data.model_args(role)) for role in ROLES}}
    if isinstance(data, TokenData):
        record["tokenizer"] = tokenizer_record(data.tokenizer)
        record["chat_template"] = getattr(data, "chat_template", None)
    if isinstance(data, ClassData):
        record["image_size"] = data.image_size
    return record


def tokenizer_record(tokenizer: Tokenizer) -> dict[str, Any] | None:
    """`tokenizer` as plain data (`tokenizer_from_record` reads it back), or None for a kind it cannot keep."""
    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "bytes"}
    if isinstance(tokenizer, BPETokenizer):
        return {"kind": "bpe", "vocab_size": tokenizer.vocab_size, "json": tokenizer.tokenizer.to_str()}
    hf = getattr(tokenizer, "tokenizer", None)  # HFTokenizer, and the processor tokenizer of image-text data
    if hf is not None and hasattr(hf, "save_pretrained"):
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            files = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir()) if path.is_file()}
        return {"kind": "hf", "name": str(getattr(tokenizer, "name_or_path", hf.name_or_path)), "files": files}
    return None


def tokenizer_from_record(record: dict[str, Any]) -> Tokenizer:
    """The tokenizer kept by `tokenizer_record`, exactly as the run used it."""
    kind = record.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as RustTokenizer

        return BPETokenizer(RustTokenizer.from_str(record["json"]), int(record["vocab_size"]))
    if kind == "hf":
        with tempfile.TemporaryDirectory() as folder:  # read whole into memory: the folder can go
            for name, content in record["files"].items():
                (Path(folder) / name).write_bytes(content)
            tokenizer = HFTokenizer(folder)
        tokenizer.name_or_path = record["name"]
        return tokenizer
    raise DistillError(f"the run's checkpoint keeps a tokenizer of an unknown kind {kind!r}")
