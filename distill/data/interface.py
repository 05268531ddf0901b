"""The typed interface the framework and the tasks rely on, whatever the datamodule: a `Protocol` per kind of data,
so a task states what it reads (`ClassData`, `TokenData`) instead of probing with `getattr`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch.utils.data import Dataset

from distill.data.tokenizers import Tokenizer


@runtime_checkable
class DataSource(Protocol):
    """Every datamodule: train/val/test splits, the sizes models are built with, and a seed the engine sets."""

    batch_size: int
    seed: int  # shuffling and augmentation seed, set from the recipe's `seed`

    @property
    def train_set(self) -> Dataset: ...

    @property
    def val_set(self) -> Dataset: ...

    @property
    def test_set(self) -> Dataset: ...

    def model_args(self, role: str) -> dict[str, int]:
        """What a model of `role` ('student' or 'teacher') is sized by: classes and channels, or a vocabulary."""
        ...

    def prepare_data(self) -> None: ...

    def setup(self, stage: str | None = None) -> None: ...


@runtime_checkable
class ClassData(DataSource, Protocol):
    """Labelled images: samples `(float32 [C, H, W], int label)`."""

    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str] | None  # readable names, for zero-shot prompts; None where the dataset has none
    on_device: bool  # the set lives on the accelerator; training batches carry their sample indices
    channels_last: bool  # on-device batches come in channels_last memory format


@runtime_checkable
class TokenData(DataSource, Protocol):
    """Token rows for language models: `input_ids`, `attention_mask`, `labels` (-100 where not trained on)."""

    tokenizer: Tokenizer
    pad_id: int
    has_teacher_tokenizer: bool  # the teacher reads its own tokenization (`teacher_input_ids`, ...)


@runtime_checkable
class ResponseData(TokenData, Protocol):
    """Token rows whose answers a task may generate again (on-policy sampling): each side's row length, and the
    token sequences that end an answer on each side besides the eos (a chat template's end of turn)."""

    def row_length(self, role: str) -> int: ...

    def end_of_turn(self, role: str) -> list[list[int]]: ...


@runtime_checkable
class DataReport(Protocol):
    """Data that counts what building its rows cost (documents dropped, rows cut), per split, for the run to
    record."""

    statistics: dict[str, dict]
