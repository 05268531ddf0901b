"""Causal language-model data: documents, prompt/response pairs or conversations, tokenized into fixed-length rows.

Rows come in two ways. Without a teacher tokenizer, plain text is packed at the token level (documents joined by
eos, cut into `seq_len` blocks). With one, every row is first built as text (pieces of documents, each maybe
followed by eos) and then tokenized by both tokenizers, so that student row i and teacher row i hold the same text.
Conversations are rendered by each side's chat template (`distill.data.chat`), one per row or, with packing, several
per row with position ids restarting at each (`distill.data.packing`). Batches are padded to the row length or to
their longest row (`distill.data.padding`).
"""

from __future__ import annotations

import random

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from distill.data.base import DATASETS, SeededLoaders, check_at_least, check_fraction
from distill.data.chat import ChatRenderer, encode_conversation, end_of_turn
from distill.data.conversation import Conversation
from distill.data.corpus import PYTHON_STDLIB, PYTHON_STDLIB_CHAT, SOURCE_FORMS, Documents, Pair, read_source
from distill.data.packing import pack_groups, packed_row
from distill.data.padding import Padding, PadToLongest, check_padding
from distill.data.row_report import split_report, warning
from distill.data.sources import Source, SourceValue, plan_sources
from distill.data.text_rows import (  # noqa: F401  (IGNORE is part of this module's API)
    IGNORE,
    MIN_SEQ_LEN,
    TokenRow,
    TokenRows,
    encode_row,
    fit_row,
    has_target,
    pack_text,
    pack_tokens,
    row_tensors,
    text_rows,
)
from distill.data.tokenizers import Tokenizer, make_tokenizer
from distill.errors import DistillError


@DATASETS.register("text")
class CausalLMDataModule(SeededLoaders, L.LightningDataModule):
    """Text for causal language models: the Python standard library's docstrings, or your .txt / .jsonl files.

    Batches are dicts of LongTensors `[B, T]`: `input_ids`, `attention_mask` (1 real, 0 padding) and `labels`
    (the input ids, not shifted; -100 on padding and on prompts); packed conversations add `position_ids`. With
    `teacher_tokenizer`, also `teacher_input_ids`, `teacher_attention_mask` and `teacher_labels` `[B, T_teacher]`
    (and `teacher_position_ids`): the same text of each row in the teacher's tokens. Documents are split into
    train/val before tokenization, so no text is in both; test uses val.

    Args:
        source: 'python_stdlib' (docstrings of Python's own modules: no download), 'python_stdlib_chat' (the same
            as conversations: the user gives a docstring's first sentence, the assistant continues it), a .txt
            file (one document per blank-line-separated block), a .jsonl file (lines {"text": ...},
            {"prompt": ..., "response": ...} or {"messages": [...]}; only responses and assistant turns are
            trained on), or a folder of such files; or a Hugging Face `datasets` source with `messages`, `text` or
            `prompt`/`response` columns: 'hf:<name>' (the Hub), a folder written by `save_to_disk`, or .parquet
            files. Or a mapping {path, split, val_split, revision} that keeps a `datasets` source's splits with it,
            so that overriding the source replaces them too (`distill.data.sources`).
        validation: What to validate and test on instead of a held-out fraction: a source of any form above (a
            JSONL file of your own, another dataset, or a mapping {path, split, revision}).
        tokenizer: The student's tokenizer: 'bytes', 'bpe:<vocab_size>' (trained on the training split once, then
            cached) or 'hf:<name_or_path>' (a Hugging Face tokenizer).
        teacher_tokenizer: A different tokenizer for the teacher (same forms); None: the teacher reads the student's
            ids.
        seq_len: Tokens per student row.
        teacher_seq_len: Tokens per teacher row, when teacher_tokenizer is set; longer rows are cut (None: as long
            as the longest teacher row, so that nothing is cut).
        packing: Fill rows: plain-text documents joined with eos; conversations several to a row, each attending to
            itself only (position ids restart at each). False: one document or conversation per row, cut and
            padded. Prompt/response pairs are never packed.
        padding: 'max_length': every batch padded to the row length; 'longest': each batch to its longest row
            (per side), rounded up to `pad_to_multiple_of`.
        pad_to_multiple_of: With padding 'longest', batch widths are multiples of this (kernels see fewer shapes).
        batch_size: Rows per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: Fraction of the documents held out for validation (and testing) when nothing else is named.
        split_seed: Seed of the train/val split of the documents.
        max_documents: Use only the first N documents of the source (None: all of them; of each source or split
            with `validation` or `val_split`).
        tokenizer_cache: Folder where trained BPE tokenizers are kept.
        split: The split of a `datasets` source named by a path to train on (and to hold `val_fraction` out of);
            None: 'train', or the source mapping's.
        val_split: A split of the same `datasets` source to validate and test on instead of a held-out fraction.
        revision: The Hub revision (branch, tag or commit) of an 'hf:' source.
        columns: The source's column (or JSONL key) for each name read, e.g. {"messages": "conversation"}.
        chat_template: For conversations (`messages`): 'chatml' or a Jinja template, used by both tokenizers in
            place of their own; None: each tokenizer's own chat template (a Hugging Face tokenizer's).
    """

    def __init__(
        self,
        *,
        source: SourceValue = PYTHON_STDLIB,
        validation: SourceValue | None = None,
        tokenizer: str = "bytes",
        teacher_tokenizer: str | None = None,
        seq_len: int = 128,
        teacher_seq_len: int | None = None,
        packing: bool = True,
        padding: Padding = "max_length",
        pad_to_multiple_of: int = 8,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_documents: int | None = None,
        tokenizer_cache: str = "runs/tokenizers",
        split: str | None = None,
        val_split: str | None = None,
        revision: str | None = None,
        columns: dict[str, str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__()
        check_at_least("seq_len", seq_len, MIN_SEQ_LEN)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        check_fraction("val_fraction", val_fraction)
        check_padding(padding, pad_to_multiple_of)
        if max_documents is not None:
            check_at_least("max_documents", max_documents, 2)
        if teacher_seq_len is not None:
            if teacher_tokenizer is None:
                raise DistillError("data.teacher_seq_len is set but data.teacher_tokenizer is not; set both or neither")
            check_at_least("teacher_seq_len", teacher_seq_len, MIN_SEQ_LEN)
        self.sources = plan_sources(
            source,
            validation,
            split=split,
            val_split=val_split,
            revision=revision,
            columns=columns,
            forms=SOURCE_FORMS,
            special=(PYTHON_STDLIB, PYTHON_STDLIB_CHAT),
        )
        self.source = self.sources.train.path
        self.columns = columns
        self.chat_template = chat_template
        self.tokenizer_specs = {"student": tokenizer, "teacher": teacher_tokenizer or tokenizer}
        self.seq_len = seq_len
        self.packing = packing
        self.collate_fn = PadToLongest(pad_to_multiple_of) if padding == "longest" else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_documents = max_documents
        self.seed = 0  # shuffling seed: set from the recipe's `seed` by the framework
        self._documents: tuple[Documents, Documents] | None = None
        self._splits: tuple[TokenRows, TokenRows] | None = None
        self.statistics: dict[str, dict] = {}  # per split: documents, rows, dropped, cut per side (`row_report`)

        self.tokenizer: Tokenizer = make_tokenizer(tokenizer, self._training_texts, tokenizer_cache)
        self.has_teacher_tokenizer = teacher_tokenizer is not None
        self.teacher_tokenizer: Tokenizer = (
            make_tokenizer(teacher_tokenizer, self._training_texts, tokenizer_cache)
            if teacher_tokenizer is not None
            else self.tokenizer
        )
        # None until `setup` measures the data when not given; stays None without a teacher tokenizer.
        self.teacher_seq_len: int | None = teacher_seq_len
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id = self.tokenizer.pad_id
        self.teacher_vocab_size = self.teacher_tokenizer.vocab_size
        self.teacher_pad_id = self.teacher_tokenizer.pad_id

    def model_args(self, role: str) -> dict[str, int]:
        """What a model is sized by: the vocabulary of its tokenizer (`role` is 'student' or 'teacher')."""
        if role == "student":
            return {"vocab_size": self.vocab_size}
        if role == "teacher":
            return {"vocab_size": self.teacher_vocab_size}
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")

    def row_length(self, role: str) -> int:
        """Tokens per row of `role`'s side (its rows are at most this long, before any padding is cut)."""
        self.setup()
        length = self.seq_len if role == "student" or not self.has_teacher_tokenizer else self.teacher_seq_len
        assert length is not None
        return length

    def end_of_turn(self, role: str) -> list[list[int]]:
        """The token sequences that end an answer on `role`'s side: the chat template's end of turn (when the data is
        conversations and the template writes one); the tokenizer's eos ends one always and is not listed."""
        if not isinstance(self.documents[0][0], Conversation):
            return []
        tokenizer = self.tokenizer if role == "student" else self.teacher_tokenizer
        stop = end_of_turn(self._renderer(role), tokenizer)  # type: ignore[arg-type]
        return [stop] if stop else []

    # Documents ------------------------------------------------------------------------------------------------

    @property
    def documents(self) -> tuple[Documents, Documents]:
        """`(train, val)` documents, read and split once; each keeps the source's order."""
        if self._documents is None:
            self._documents = self._read_and_split()
        return self._documents

    def _read(self, source: Source) -> Documents:
        documents = read_source(source.path, source.split, source.revision, self.columns)
        return documents[: self.max_documents] if self.max_documents is not None else documents

    def _read_and_split(self) -> tuple[Documents, Documents]:
        documents = self._read(self.sources.train)
        if self.sources.validation is not None:
            validation = self._read(self.sources.validation)
            if type(validation[0]) is not type(documents[0]):
                raise DistillError(
                    f"data.validation '{self.sources.validation.describe()}' holds {_kind(validation)} but data.source "
                    f"'{self.sources.train.describe()}' holds {_kind(documents)}; validate on the same kind"
                )
            return documents, validation
        if len(documents) < 2:
            raise DistillError(f"data.source '{self.source}' has {len(documents)} document; need >= 2 to split")
        val_count = min(len(documents) - 1, max(1, round(len(documents) * self.val_fraction)))
        order = list(range(len(documents)))
        random.Random(self.split_seed).shuffle(order)
        val = set(order[:val_count])
        train_docs = [d for i, d in enumerate(documents) if i not in val]
        val_docs = [d for i, d in enumerate(documents) if i in val]
        return train_docs, val_docs  # type: ignore[return-value]

    def _training_texts(self) -> list[str]:
        """The texts a BPE tokenizer is trained on: the training split only."""
        texts: list[str] = []
        for document in self.documents[0]:
            if isinstance(document, Conversation):
                texts.extend(document.texts())
            else:
                texts.extend((document.prompt, document.response) if isinstance(document, Pair) else (document,))
        return texts

    # Rows -------------------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        encoded = {split: self._encode(docs) for split, docs in zip(("train", "val"), self.documents, strict=True)}
        kept = {split: self._kept(split, *rows) for split, rows in encoded.items()}
        if self.has_teacher_tokenizer and self.teacher_seq_len is None:
            # As long as the longest teacher row of either split: nothing is cut, train and val shapes agree.
            lengths = [len(row.ids) for _, teacher in kept.values() for row in teacher or ()]
            self.teacher_seq_len = max(lengths, default=MIN_SEQ_LEN)
        self._splits = (self._tensors(*kept["train"]), self._tensors(*kept["val"]))

    def _encode(self, documents: Documents) -> tuple[list[TokenRow], list[TokenRow] | None]:
        """The student's rows, and the teacher's rows of the same texts (None without a teacher tokenizer)."""
        if isinstance(documents[0], Conversation):
            return self._encode_conversations(documents)  # type: ignore[arg-type]
        plain = isinstance(documents[0], str)
        if not self.has_teacher_tokenizer:
            if self.packing and plain:
                return pack_tokens(documents, self.tokenizer, self.seq_len), None  # type: ignore[arg-type]
            return [encode_row(row, self.tokenizer, self.seq_len) for row in text_rows(documents)], None
        if self.packing and plain:
            rows = pack_text(documents, self.tokenizer, self.seq_len)  # type: ignore[arg-type]
        else:
            rows = [fit_row(row, self.tokenizer, self.seq_len) for row in text_rows(documents)]
        student = [encode_row(row, self.tokenizer, self.seq_len) for row in rows]
        teacher = [encode_row(row, self.teacher_tokenizer, self.teacher_seq_len) for row in rows]
        return student, teacher

    def _encode_conversations(self, conversations: list[Conversation]) -> tuple[list[TokenRow], list[TokenRow] | None]:
        """Each side renders the conversation with its own chat template and tokenizer: one row per conversation
        (packed later), trained on the assistant's turns."""
        student = [
            encode_conversation(c, self.tokenizer, self._renderer("student"), self.seq_len) for c in conversations
        ]
        if not self.has_teacher_tokenizer:
            return student, None
        renderer, length = self._renderer("teacher"), self.teacher_seq_len
        teacher = [encode_conversation(c, self.teacher_tokenizer, renderer, length) for c in conversations]
        return student, teacher

    def _renderer(self, role: str) -> ChatRenderer:
        tokenizer = self.tokenizer if role == "student" else self.teacher_tokenizer
        return ChatRenderer(tokenizer, self.chat_template, f"the {role} tokenizer '{self.tokenizer_specs[role]}'")

    def _kept(
        self, split: str, student: list[TokenRow], teacher: list[TokenRow] | None
    ) -> tuple[list[TokenRow], list[TokenRow] | None]:
        """The rows with a target on both sides (a pair whose response was cut has none), counted and reported, and
        packed when they are conversations and `packing` is on."""
        teacher_rows = teacher if teacher is not None else student
        kept = [i for i, row in enumerate(student) if has_target(row) and has_target(teacher_rows[i])]
        student = [student[i] for i in kept]
        teacher = [teacher[i] for i in kept] if teacher is not None else None
        index = 0 if split == "train" else 1
        conversations = isinstance(self.documents[index][0], Conversation)
        report = split_report(len(self.documents[index]), len(kept), len(teacher_rows) - len(kept), student, teacher)
        if conversations and self.packing:
            student, teacher = self._packed(student, teacher)
        report["rows"] = len(student)
        self._count(split, report, _kind(self.documents[index]))
        return student, teacher

    def _packed(
        self, student: list[TokenRow], teacher: list[TokenRow] | None
    ) -> tuple[list[TokenRow], list[TokenRow] | None]:
        """Consecutive conversations packed into rows that fit each side's row length (`distill.data.packing`)."""
        sides = [student] if teacher is None else [student, teacher]
        limits = [self.seq_len] if teacher is None else [self.seq_len, self.teacher_seq_len]
        groups = pack_groups([[len(row.ids) for row in rows] for rows in sides], limits)
        packed = [[packed_row([rows[i] for i in group]) for group in groups] for rows in sides]
        return packed[0], packed[1] if teacher is not None else None

    def _tensors(self, student: list[TokenRow], teacher: list[TokenRow] | None) -> TokenRows:
        """The rows as padded tensors (both sides)."""
        tensors = row_tensors(student, self.seq_len, self.pad_id)
        if teacher is not None:
            assert self.teacher_seq_len is not None
            teacher_tensors = row_tensors(teacher, self.teacher_seq_len, self.teacher_pad_id)
            tensors.update({f"teacher_{key}": value for key, value in teacher_tensors.items()})
        return TokenRows(tensors, indexed=True)

    @property
    def dropped_rows(self) -> dict[str, int]:
        """Per split: documents with nothing left to train on within the row."""
        return {split: report["dropped"] for split, report in self.statistics.items()}

    @property
    def teacher_truncated_rows(self) -> dict[str, int]:
        """Per split: rows cut on the teacher's side."""
        return {split: sum(r["truncated"].get("teacher", {}).values()) for split, r in self.statistics.items()}

    def _count(self, split: str, report: dict, what: str) -> None:
        self.statistics[split] = report
        limits = {"student": f"data.seq_len={self.seq_len}", "teacher": f"data.teacher_seq_len={self.teacher_seq_len}"}
        line = warning(split, what, report, limits)
        if line:
            rank_zero_warn(line)

    def _split(self, index: int) -> TokenRows:
        self.setup()
        assert self._splits is not None
        if len(self._splits[index]) == 0:
            raise DistillError(f"data: the {('train', 'val')[index]} split has no rows (increase data.max_documents?)")
        return self._splits[index]

    @property
    def train_set(self) -> TokenRows:
        return self._split(0)

    @property
    def val_set(self) -> TokenRows:
        return self._split(1)

    @property
    def test_set(self) -> TokenRows:
        return self._split(1)


def _kind(documents: Documents) -> str:
    if isinstance(documents[0], Conversation):
        return "conversations"
    return "prompt/response pairs" if isinstance(documents[0], Pair) else "documents"
