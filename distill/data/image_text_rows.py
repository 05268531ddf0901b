"""Pieces of the `image_text` data module: reading its JSONL records and images, loading the model's Hugging Face
processor, and the dataset of token rows whose images are read and processed at each access."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from distill.data.corpus import json_lines
from distill.data.hub import hub_offline
from distill.data.tables import read_table
from distill.data.tokenizers import _first_line
from distill.errors import DistillError

KEYS = ("image", "prompt", "response")
LLAVA_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"  # LLaVA-1.5's conversation format


@dataclass(frozen=True)
class ImageTextRecord:
    image: Path | bytes  # a file, or an encoded image held in memory (a `datasets` image column)
    prompt: str
    response: str

    def describe(self) -> str:
        return f"image '{self.image}'" if isinstance(self.image, Path) else "an embedded image"


def read_records(path: Path, columns: Mapping[str, str] | None = None) -> list[ImageTextRecord]:
    """The file's records (blank lines skipped, keys renamed by `columns`); image paths are relative to the file's
    folder, or absolute."""
    records = []
    for where, record in json_lines(path, lambda number: f"data.source '{path}' line {number}", columns):
        missing = [key for key in KEYS if not isinstance(record, dict) or not isinstance(record.get(key), str)]
        if missing:
            raise DistillError(f"{where}: needs string values for {KEYS}; missing or not a string: {missing}")
        image = path.parent / Path(record["image"]).expanduser()  # an absolute path replaces the folder
        if not image.is_file():
            raise DistillError(f"{where}: no such image file '{image}'")
        records.append(ImageTextRecord(image, record["prompt"], record["response"]))
    return records


def read_table_records(
    source: str, split: str, revision: str | None, columns: Mapping[str, str] | None
) -> list[ImageTextRecord]:
    """The records of a Hugging Face `datasets` source with image, prompt and response columns: the image is an
    image feature (kept encoded, decoded when read) or a path (relative to a local source's folder)."""
    folder = Path(source).expanduser()
    folder = folder.parent if folder.is_file() else folder
    records = []
    for number, record in enumerate(read_table(source, [KEYS], columns, split, revision)):
        where = f"data.source '{source}' ({split}) row {number}"
        if not all(isinstance(record[key], str) for key in KEYS[1:]):
            raise DistillError(f"{where}: prompt and response must be text")
        image = record["image"]
        if isinstance(image, dict) and image.get("bytes"):
            image = bytes(image["bytes"])
        else:
            path = image.get("path") if isinstance(image, dict) else image
            if not isinstance(path, str) or not (folder / Path(path).expanduser()).is_file():
                raise DistillError(f"{where}: the image is neither embedded nor an existing file ({path!r})")
            image = folder / Path(path).expanduser()
        records.append(ImageTextRecord(image, record["prompt"], record["response"]))
    return records


def open_image(source: Path | bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except OSError as exc:
        what = f"image '{source}'" if isinstance(source, Path) else "an embedded image"
        raise DistillError(f"cannot read {what}: {_first_line(exc)}") from None


def load_processor(spec: str) -> Any:
    """The Hugging Face processor (image processor and tokenizer) named 'hf:<name_or_path>'."""
    kind, _, name = spec.partition(":")
    if kind != "hf" or not name:
        raise DistillError(f"data.processor must be 'hf:<name_or_path>' (e.g. 'hf:llava-hf/llava-1.5-7b-hf'): '{spec}'")
    from transformers import AutoProcessor

    offline = hub_offline()
    try:
        processor = AutoProcessor.from_pretrained(name, local_files_only=offline)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "not found from here"
        raise DistillError(
            f"data.processor '{spec}': cannot load it (no local folder of that name, and the Hugging Face Hub is "
            f"unreachable or has no such repository: {_first_line(exc)}); where there is network, save it with "
            "AutoProcessor.from_pretrained(name).save_pretrained(folder) and use 'hf:<folder>'"
        ) from None
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise DistillError(f"data.processor '{spec}' is not an image-text processor (no image processor and tokenizer)")
    return processor


class ProcessorTokenizer:
    """The processor's tokenizer as the framework reads tokenizers (pad falls back to eos; vocab_size = its len)."""

    def __init__(self, tokenizer: Any, spec: str) -> None:
        if tokenizer.eos_token_id is None:
            raise DistillError(f"data.processor '{spec}': its tokenizer has no eos token")
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id: int | None = tokenizer.bos_token_id
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class ImageTextRows(Dataset):
    """Token rows with their images; items are dicts of `input_ids`, `attention_mask`, `labels` (long `[T]`) and the
    image processor's outputs for the row's image without the batch dim (`pixel_values` `[3, H, W]` for LLaVA-1.5),
    the image being read at each access."""

    def __init__(self, tensors: dict[str, torch.Tensor], images: list[Path | bytes], image_processor: Any) -> None:
        self.tensors, self.images, self.image_processor = tensors, images, image_processor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        vision = self.image_processor(images=open_image(self.images[index]), return_tensors="pt")
        return {**{key: value[index] for key, value in self.tensors.items()}, **{k: v[0] for k, v in vision.items()}}
