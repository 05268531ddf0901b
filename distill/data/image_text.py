"""Image-text pairs for LLaVA-style vision-language models: a local JSONL file of {"image", "prompt", "response"}
lines, each row made by the model's own Hugging Face processor, which expands the image token of the prompt into
as many image tokens as the model's vision tower gives features."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from distill.data.base import DATASETS, SeededLoaders, check_at_least, check_fraction
from distill.data.image_text_rows import (
    KEYS,
    LLAVA_TEMPLATE,
    ImageTextRecord,
    ImageTextRows,
    ProcessorTokenizer,
    load_processor,
    open_image,
    read_records,
    read_table_records,
)
from distill.data.preference_pairs import split_train_val
from distill.data.tables import check_source, is_table_source
from distill.data.text_rows import IGNORE, MIN_SEQ_LEN
from distill.data.tokenizers import _first_line
from distill.errors import DistillError


@DATASETS.register("image_text")
class ImageTextDataModule(SeededLoaders, L.LightningDataModule):
    """Images with a prompt and a response, from a JSONL file, for LLaVA-style vision-language models.

    Each row is the model's processor applied to (image, the filled prompt template, a space, the response), then eos:
    `input_ids`, `attention_mask` (1 real, 0 padding) and `labels` (the input ids, not shifted; -100 on the prompt,
    its image tokens included, and on padding), LongTensors `[B, seq_len]`, and `pixel_values` `[B, 3, H, W]`. The
    records are split into train and val before tokenization; test uses val.

    Args:
        source: A .jsonl file of {"image": path, "prompt": str, "response": str} lines (other keys are ignored);
            image paths are relative to the file's folder, or absolute. Or a Hugging Face `datasets` source
            ('hf:<name>', a save_to_disk folder, .parquet files) with those columns, the image an image feature
            (kept encoded in memory, decoded per access) or a path.
        processor: The model's Hugging Face processor: 'hf:<name_or_path>' (e.g. 'hf:llava-hf/llava-1.5-7b-hf'), a
            local folder or a Hub name.
        prompt_template: The text before the response: '{prompt}' is replaced by the record's prompt, and the image
            token ('<image>' for LLaVA) is expanded by the processor. The default is LLaVA-1.5's.
        seq_len: Tokens per row: longer rows are cut, shorter ones right-padded; rows with no response token left
            are dropped (with a warning).
        batch_size: Rows per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: Fraction of the records held out for validation (and testing).
        split_seed: Seed of the train/val split of the records.
        max_records: Use only the first N records of the file (None: all of them).
        split: The split of a `datasets` source to train on (and to hold `val_fraction` out of).
        val_split: A split of the same `datasets` source to validate and test on instead of a held-out fraction.
        revision: The Hub revision (branch, tag or commit) of an 'hf:' source.
        columns: The source's column for each name read, e.g. {"image": "picture", "response": "caption"}.
    """

    def __init__(
        self,
        *,
        source: str | None = None,
        processor: str = "hf:llava-hf/llava-1.5-7b-hf",
        prompt_template: str = LLAVA_TEMPLATE,
        seq_len: int = 1024,
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_records: int | None = None,
        split: str = "train",
        val_split: str | None = None,
        revision: str | None = None,
        columns: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        check_at_least("seq_len", seq_len, MIN_SEQ_LEN)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        check_fraction("val_fraction", val_fraction)
        if max_records is not None:
            check_at_least("max_records", max_records, 2)
        forms = f"a .jsonl file of {KEYS} lines, or a Hugging Face datasets source with those columns"
        if source is None:
            raise DistillError(f"data.source is required: {forms}")
        check_source(source, forms, special=(), val_split=val_split, revision=revision, columns=columns)
        if not is_table_source(source) and not Path(source).expanduser().is_file():
            raise DistillError(f"data.source: '{source}' is not a file ({forms})")
        if "{prompt}" not in prompt_template:
            raise DistillError(f"data.prompt_template must contain '{{prompt}}': {prompt_template!r}")
        self.processor = load_processor(processor)
        image_token = getattr(self.processor, "image_token", None)
        if image_token is not None and image_token not in prompt_template:
            raise DistillError(f"data.prompt_template lacks the processor's image token {image_token!r}")
        self.source = source if is_table_source(source) else Path(source).expanduser()
        self.split, self.val_split, self.revision, self.columns = split, val_split, revision, columns
        self.prompt_template, self.seq_len, self.max_records = prompt_template, seq_len, max_records
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.seed = 0  # shuffling seed: set from the recipe's `seed` by the framework
        self.tokenizer = ProcessorTokenizer(self.processor.tokenizer, processor)
        self.pad_id, self.vocab_size = self.tokenizer.pad_id, self.tokenizer.vocab_size
        self.has_teacher_tokenizer = False  # teacher and student read the same tokens
        self.image_token_id: int | None = getattr(self.processor, "image_token_id", None)
        self.dropped_rows: dict[str, int] = {}  # per split: records with no response token within seq_len
        self._splits: tuple[ImageTextRows, ImageTextRows] | None = None

    def model_args(self, role: str) -> dict[str, int]:
        """What a model is sized by: the vocabulary (student and teacher share the processor)."""
        if role in ("student", "teacher"):
            return {"vocab_size": self.vocab_size}
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        records = self._read(self.split)
        if self.val_split is not None:
            train, val = records, self._read(self.val_split)
        else:
            if len(records) < 2:
                raise DistillError(f"data.source '{self.source}' has {len(records)} record; need >= 2 to split")
            train, val = split_train_val(records, self.val_fraction, self.split_seed)
        self._splits = self._rows("train", train), self._rows("val", val)

    def _read(self, split: str) -> list[ImageTextRecord]:
        if isinstance(self.source, Path):
            records = read_records(self.source, self.columns)
        else:
            records = read_table_records(self.source, split, self.revision, self.columns)
        return records[: self.max_records]

    def encode(self, record: ImageTextRecord) -> tuple[list[int], int]:
        """The record's ids (cut to seq_len) and its prompt's length (the processor's image tokens included)."""
        image, prompt = open_image(record.image), self.prompt_template.replace("{prompt}", record.prompt)
        try:
            prompt_ids = self.processor(images=image, text=prompt)["input_ids"][0]
            ids = self.processor(images=image, text=f"{prompt} {record.response}")["input_ids"][0]
        except ValueError as exc:  # e.g. a prompt with an image token of its own
            raise DistillError(f"data.source: the record of {record.describe()}: {_first_line(exc)}") from None
        return [*ids, self.tokenizer.eos_id][: self.seq_len], len(prompt_ids)

    def _rows(self, split: str, records: list[ImageTextRecord]) -> ImageTextRows:
        encoded = [(record, *self.encode(record)) for record in records]
        kept = [(record, ids, prompt) for record, ids, prompt in encoded if prompt < len(ids)]
        self.dropped_rows[split] = dropped = len(records) - len(kept)
        if dropped:
            rank_zero_warn(f"data ({split}): dropped {dropped} rows with no response token within data.seq_len")
        if not kept:
            raise DistillError(f"data: the {split} split has no rows within data.seq_len={self.seq_len}; increase it")
        ids = torch.full((len(kept), self.seq_len), self.pad_id, dtype=torch.long)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE)
        for row, (_, tokens, prompt) in enumerate(kept):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
            labels[row, prompt : len(tokens)] = ids[row, prompt : len(tokens)]
        tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return ImageTextRows(tensors, [record.image for record, _, _ in kept], self.processor.image_processor)

    @property
    def train_set(self) -> ImageTextRows:
        self.setup()
        return self._splits[0]  # type: ignore[index]

    @property
    def val_set(self) -> ImageTextRows:
        self.setup()
        return self._splits[1]  # type: ignore[index]

    @property
    def test_set(self) -> ImageTextRows:
        return self.val_set
