"""Causal language-model data: documents, prompt/response pairs or conversations, tokenized into fixed-length rows.

Rows come in two ways. Without a teacher tokenizer, plain text is packed at the token level (documents joined by
eos, cut into `seq_len` blocks). With one, every row is first built as text (pieces of documents, each maybe
followed by eos) and then tokenized by both tokenizers, so that student row i and teacher row i hold the same text.
Conversations are one row each, rendered by each side's chat template (`distill.data.chat`).
"""

from __future__ import annotations

import random

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from distill.data.base import DATASETS, SeededLoaders, check_at_least, check_fraction
from distill.data.chat import ChatRenderer, encode_conversation
from distill.data.conversation import Conversation
from distill.data.corpus import PYTHON_STDLIB, PYTHON_STDLIB_CHAT, SOURCE_FORMS, Documents, Pair, read_source
from distill.data.tables import check_source
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
    (the input ids, not shifted; -100 on padding and on prompts). With `teacher_tokenizer`, also `teacher_input_ids`,
    `teacher_attention_mask` and `teacher_labels` `[B, T_teacher]`: the same text of each row in the teacher's
    tokens. Documents are split into train/val before tokenization, so no text is in both; test uses val.

    Args:
        source: 'python_stdlib' (docstrings of Python's own modules: no download), 'python_stdlib_chat' (the same
            as conversations: the user gives a docstring's first sentence, the assistant continues it), a .txt
            file (one document per blank-line-separated block), a .jsonl file (lines {"text": ...},
            {"prompt": ..., "response": ...} or {"messages": [...]}; only responses and assistant turns are
            trained on), or a folder of such files; or a Hugging Face `datasets` source with `messages`, `text` or
            `prompt`/`response` columns: 'hf:<name>' (the Hub), a folder written by `save_to_disk`, or .parquet
            files.
        tokenizer: The student's tokenizer: 'bytes', 'bpe:<vocab_size>' (trained on the training split once, then
            cached) or 'hf:<name_or_path>' (a Hugging Face tokenizer).
        teacher_tokenizer: A different tokenizer for the teacher (same forms); None: the teacher reads the student's
            ids.
        seq_len: Tokens per student row.
        teacher_seq_len: Tokens per teacher row, when teacher_tokenizer is set; longer rows are cut (None: as long
            as the longest teacher row, so that nothing is cut).
        packing: Join plain-text documents with eos and fill every row; False: one document per row, cut and padded.
            Prompt/response pairs are never packed.
        batch_size: Rows per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: Fraction of the documents held out for validation (and testing).
        split_seed: Seed of the train/val split of the documents.
        max_documents: Use only the first N documents of the source (None: all of them; of each split with
            `val_split`).
        tokenizer_cache: Folder where trained BPE tokenizers are kept.
        split: The split of a `datasets` source to train on (and to hold `val_fraction` out of).
        val_split: A split of the same `datasets` source to validate and test on instead of a held-out fraction.
        revision: The Hub revision (branch, tag or commit) of an 'hf:' source.
        columns: The source's column for each name read, e.g. {"prompt": "question", "response": "answer"}.
        chat_template: For conversations (`messages`): 'chatml' or a Jinja template, used by both tokenizers in
            place of their own; None: each tokenizer's own chat template (a Hugging Face tokenizer's).
    """

    def __init__(
        self,
        *,
        source: str = PYTHON_STDLIB,
        tokenizer: str = "bytes",
        teacher_tokenizer: str | None = None,
        seq_len: int = 128,
        teacher_seq_len: int | None = None,
        packing: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_documents: int | None = None,
        tokenizer_cache: str = "runs/tokenizers",
        split: str = "train",
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
        if max_documents is not None:
            check_at_least("max_documents", max_documents, 2)
        if teacher_seq_len is not None:
            if teacher_tokenizer is None:
                raise DistillError("data.teacher_seq_len is set but data.teacher_tokenizer is not; set both or neither")
            check_at_least("teacher_seq_len", teacher_seq_len, MIN_SEQ_LEN)
        settings = {"val_split": val_split, "revision": revision, "columns": columns}
        check_source(source, SOURCE_FORMS, (PYTHON_STDLIB, PYTHON_STDLIB_CHAT), **settings)
        self.source = source
        self.split, self.val_split, self.revision, self.columns = split, val_split, revision, columns
        self.chat_template = chat_template
        self.tokenizer_specs = {"student": tokenizer, "teacher": teacher_tokenizer or tokenizer}
        self.seq_len = seq_len
        self.packing = packing
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_documents = max_documents
        self.seed = 0  # shuffling seed: set from the recipe's `seed` by the framework
        self._documents: tuple[Documents, Documents] | None = None
        self._splits: tuple[TokenRows, TokenRows] | None = None
        self.dropped_rows: dict[str, int] = {}  # per split: pairs whose response did not fit
        self.teacher_truncated_rows: dict[str, int] = {}  # per split: rows cut on the teacher side

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

    # Documents ------------------------------------------------------------------------------------------------

    @property
    def documents(self) -> tuple[Documents, Documents]:
        """`(train, val)` documents, read and split once; each keeps the source's order."""
        if self._documents is None:
            self._documents = self._read_and_split()
        return self._documents

    def _read(self, split: str) -> Documents:
        documents = read_source(self.source, split, self.revision, self.columns)
        return documents[: self.max_documents] if self.max_documents is not None else documents

    def _read_and_split(self) -> tuple[Documents, Documents]:
        documents = self._read(self.split)
        if self.val_split is not None:
            return documents, self._read(self.val_split)
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
        if self.has_teacher_tokenizer and self.teacher_seq_len is None:
            # As long as the longest teacher row of either split: nothing is cut, train and val shapes agree.
            lengths = [len(row.ids) for _, teacher in encoded.values() for row in teacher or ()]
            self.teacher_seq_len = max(lengths, default=MIN_SEQ_LEN)
        self._splits = (self._tensors("train", *encoded["train"]), self._tensors("val", *encoded["val"]))

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
        """Each side renders the conversation with its own chat template and tokenizer: one row per conversation,
        trained on the assistant's turns."""
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

    def _tensors(self, split: str, student: list[TokenRow], teacher: list[TokenRow] | None) -> TokenRows:
        """Rows with a target on both sides (a pair whose response was cut has none), as padded tensors."""
        teacher_rows = teacher if teacher is not None else student
        kept = [i for i, row in enumerate(student) if has_target(row) and has_target(teacher_rows[i])]
        self._count(split, dropped=len(student) - len(kept), truncated=sum(row.truncated for row in teacher or ()))
        tensors = row_tensors([student[i] for i in kept], self.seq_len, self.pad_id)
        if teacher is not None:
            assert self.teacher_seq_len is not None
            teacher_tensors = row_tensors([teacher[i] for i in kept], self.teacher_seq_len, self.teacher_pad_id)
            tensors.update({f"teacher_{key}": value for key, value in teacher_tensors.items()})
        return TokenRows(tensors, indexed=True)

    def _count(self, split: str, dropped: int, truncated: int) -> None:
        self.dropped_rows[split] = dropped
        self.teacher_truncated_rows[split] = truncated
        if dropped:
            rank_zero_warn(f"data ({split}): dropped {dropped} prompt/response rows whose response did not fit")
        if truncated:
            rank_zero_warn(f"data ({split}): cut {truncated} rows at data.teacher_seq_len={self.teacher_seq_len}")

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
