"""Preference data for DPO and AlignDistil: prompts with a chosen and a rejected response.

The reference (SFT) model these methods start from is trained with plain cross-entropy by the `text` data module on
the same corpus (`data: {name: text, source: python_stdlib}`); this module gives only the pairs. With the same
`source`, `tokenizer`, `split_seed`, `val_fraction` and `max_documents` = `max_pairs`, both modules split the corpus
identically, so a `bpe:<V>` tokenizer is trained on the same texts and is the same tokenizer (one cached file).

Pairs made from the Python standard library's docstrings (no download): the prompt is the start of a docstring, the
chosen response its real continuation, and the rejected response the same continuation with its words shuffled
(whitespace kept in place). Both responses have the same length and the same characters, so neither length nor
vocabulary tells them apart: only word order does, which even a tiny byte-level model learns to score (a corpus-
trained reference already finds the shuffled text unlikely). The shuffle is seeded by `split_seed` and the
docstring's text, so the pairs are the same in every run.
"""

from __future__ import annotations

import random

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from distill.data.base import DATASETS, SeededLoaders, check_at_least, check_fraction
from distill.data.chat import ChatRenderer
from distill.data.corpus import PYTHON_STDLIB, python_stdlib_corpus
from distill.data.preference_pairs import (
    CORRUPTIONS,
    PREFERENCE_FORMS,
    EncodedPair,
    PreferencePair,
    corpus_pairs,
    encode_pairs,
    halve,
    pair_tensors,
    prompt_length,
    read_preference_jsonl,
    read_preference_table,
    split_train_val,
)
from distill.data.tables import check_source, is_table_source
from distill.data.text_rows import MIN_SEQ_LEN, TokenRows
from distill.data.tokenizers import Tokenizer, make_tokenizer
from distill.errors import DistillError

SPLITS = ("train", "val", "test")
Records = list[str] | list[PreferencePair]  # python_stdlib docstrings, or pairs read from JSONL


@DATASETS.register("preference")
class PreferenceDataModule(SeededLoaders, L.LightningDataModule):
    """Preference pairs (prompt, chosen, rejected) for DPO and AlignDistil, from the standard library or JSONL files.

    Batches are dicts of LongTensors. For each side `s` in (chosen, rejected): `s_input_ids`, `s_attention_mask`
    and `s_labels` `[B, seq_len]`: `[bos] prompt response [eos]` right-padded; labels are the input ids (not shifted)
    with -100 on the prompt and the padding. Also `prompt_input_ids` and `prompt_attention_mask` `[B, P]`: the same
    prompt tokens left-padded (for generation; P is the longest prompt of the data), and `prompt_lengths` `[B]`: the
    prompt's token count, where the response starts in both sides' rows. Pairs are split into train and held-out
    before tokenization, as the `text` module splits the corpus the reference model is trained on; the held-out
    pairs are halved into val (which picks the best checkpoint) and test (which reports it), so the reported number
    is not the one the checkpoint was chosen on.

    Args:
        source: 'python_stdlib' (pairs cut from the standard library's docstrings; the rejected response is the real
            continuation with its words shuffled), a .jsonl file of {"prompt": str, "chosen": str, "rejected": str}
            lines (other keys are ignored), or a folder of such files; or a Hugging Face `datasets` source with those
            columns ('hf:<name>', a save_to_disk folder, .parquet files).
        tokenizer: 'bytes', 'bpe:<vocab_size>' (trained on the training split once, then cached) or
            'hf:<name_or_path>'; the same as the reference model's.
        seq_len: Tokens per chosen or rejected row (bos, prompt, response, eos); the response is cut first, and a
            pair whose prompt leaves no response token on either side is dropped (counted in `dropped_pairs`).
        prompt_chars: python_stdlib only: characters of each docstring's start used as prompt (cut at a word).
        response_chars: python_stdlib only: characters of the continuation used as response (cut at a word).
        corruption: python_stdlib only: how the rejected response is made from the real continuation: 'shuffle'
            (its words in another order) or 'replace' (one word replaced by another word of it: the pair shares the
            tokens before that word, so the preference is decided at one position).
        pairs_per_document: python_stdlib only: pairs cut from consecutive stretches of each docstring (prompt, then
            response, then the next prompt after it), at most this many; all of a docstring's pairs are in the same
            split. More pairs give more training data and a held-out accuracy with finer resolution.
        swap: Exchange chosen and rejected in every pair (how the reverse-DPO model of AlignDistil is trained).
        batch_size: Pairs per batch (per device).
        num_workers: DataLoader worker processes; 0 loads in the main process.
        val_fraction: Fraction of the pairs held out: half for validation, half for testing (with a single held-out
            pair, both use it).
        split_seed: Seed of the train/val split and of the python_stdlib word shuffles.
        max_pairs: Use only the first N records of the source (python_stdlib: its first N docstrings, each giving at
            most one pair); None: all of them.
        tokenizer_cache: Folder where trained BPE tokenizers are kept.
        split: The split of a `datasets` source to train on (and to hold `val_fraction` out of).
        val_split: A split of the same `datasets` source, halved into validation and test, instead of a held-out
            fraction.
        revision: The Hub revision (branch, tag or commit) of an 'hf:' source.
        columns: The source's column for each name read, e.g. {"chosen": "preferred"}.
        chat_template: For chat pairs (chosen/rejected as conversations, or a prompt of turns): 'chatml' or a Jinja
            template in place of the tokenizer's own; None: the tokenizer's own chat template.
    """

    def __init__(
        self,
        *,
        source: str = PYTHON_STDLIB,
        tokenizer: str = "bytes",
        seq_len: int = 128,
        prompt_chars: int = 64,
        response_chars: int = 64,
        corruption: str = "shuffle",
        pairs_per_document: int = 1,
        swap: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_pairs: int | None = None,
        tokenizer_cache: str = "runs/tokenizers",
        split: str = "train",
        val_split: str | None = None,
        revision: str | None = None,
        columns: dict[str, str] | None = None,
        chat_template: str | None = None,
    ) -> None:
        super().__init__()
        check_at_least("seq_len", seq_len, MIN_SEQ_LEN)
        check_at_least("prompt_chars", prompt_chars, 1)
        check_at_least("response_chars", response_chars, 1)
        check_at_least("pairs_per_document", pairs_per_document, 1)
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        check_fraction("val_fraction", val_fraction)
        if max_pairs is not None:
            check_at_least("max_pairs", max_pairs, 2)
        check_source(source, PREFERENCE_FORMS, val_split=val_split, revision=revision, columns=columns)
        self.source = source
        self.split, self.val_split, self.revision, self.columns = split, val_split, revision, columns
        self.chat_template, self.tokenizer_spec = chat_template, tokenizer
        self.seq_len = seq_len
        if corruption not in CORRUPTIONS:
            raise DistillError(f"data.corruption must be one of {sorted(CORRUPTIONS)}, got {corruption!r}")
        self.corruption = corruption
        self.prompt_chars = prompt_chars
        self.response_chars = response_chars
        self.pairs_per_document = pairs_per_document
        self.swap = swap
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_pairs = max_pairs
        self.seed = 0  # shuffling seed: set from the recipe's `seed` by the framework
        self._records: tuple[Records, Records] | None = None
        self._pairs: tuple[list[PreferencePair], ...] | None = None
        self._splits: tuple[TokenRows, ...] | None = None
        self.unpaired_documents = 0  # python_stdlib docstrings whose continuation has nothing to shuffle
        self.dropped_pairs: dict[str, int] = {}  # per split: pairs with no response token left within seq_len
        self.prompt_width: int | None = None  # P, the longest prompt in tokens: set by `setup`

        self.tokenizer: Tokenizer = make_tokenizer(tokenizer, self._training_texts, tokenizer_cache)
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id = self.tokenizer.pad_id
        self.has_teacher_tokenizer = False  # teacher and student read the same tokens

    def model_args(self, role: str) -> dict[str, int]:
        """What a model is sized by: the vocabulary (student and teachers share the tokenizer)."""
        if role in ("student", "teacher"):
            return {"vocab_size": self.vocab_size}
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")

    # Records and pairs ------------------------------------------------------------------------------------------

    @property
    def records(self) -> tuple[Records, Records]:
        """`(train, val)` as read and split: docstrings for python_stdlib, else pairs (not swapped)."""
        if self._records is None:
            records = self._read(self.split)
            if self.val_split is not None:
                self._records = records, self._read(self.val_split)
                return self._records
            if len(records) < 2:
                raise DistillError(f"data.source '{self.source}' has {len(records)} record; need >= 2 to split")
            self._records = split_train_val(records, self.val_fraction, self.split_seed)
        return self._records

    def _read(self, split: str) -> Records:
        if self.source == PYTHON_STDLIB:
            records: list = python_stdlib_corpus()
        elif is_table_source(self.source):
            records = read_preference_table(self.source, split, self.revision, self.columns)
        else:
            records = read_preference_jsonl(self.source, self.columns)
        return records[: self.max_pairs]

    def _training_texts(self) -> list[str]:
        """The texts a BPE tokenizer is trained on: the training split (whole docstrings, as the `text` module)."""
        train = self.records[0]
        texts: list[str] = []
        for record in train:
            if isinstance(record, str):
                texts.append(record)
            else:
                texts += [record.prompt, record.chosen, record.rejected]
                texts += record.conversation.texts() if record.conversation is not None else []
        return texts

    @property
    def pairs(self) -> tuple[list[PreferencePair], ...]:
        """`(train, val, test)` pairs, swapped when `swap` is set; before tokenization (nothing dropped)."""
        if self._pairs is None:
            self._pairs = self._make_pairs()
        return self._pairs

    def _make_pairs(self) -> tuple[list[PreferencePair], ...]:
        train, held_out = self.records
        # Records are halved, not pairs: all the pairs of one docstring are in the same split.
        parts: tuple[list, ...] = (train, *halve(held_out, self.split_seed))
        if self.source == PYTHON_STDLIB:
            made = [[self._corpus_pairs(document) for document in part] for part in parts]
            self.unpaired_documents = sum(not pairs for part in made for pairs in part)
            parts = tuple([p for pairs in part for p in pairs] for part in made)
        if self.swap:
            parts = tuple([p.swapped() for p in part] for part in parts)
        return parts

    def _corpus_pairs(self, document: str) -> list[PreferencePair]:
        # Seeded by the text itself (a str seed is hashed with SHA-512): the same pairs whatever the split or order.
        rng = random.Random(f"{self.split_seed}:{document}")
        args = (self.prompt_chars, self.response_chars, rng, self.corruption, self.pairs_per_document)
        return corpus_pairs(document, *args)

    # Rows -------------------------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        encoded = [self._encode(split, pairs) for split, pairs in zip(SPLITS, self.pairs, strict=True)]
        # The longest prompt of any split: train, val and test prompts have the same shape.
        self.prompt_width = max([1, *(prompt_length(chosen) for part in encoded for chosen, _ in part)])
        self._splits = tuple(TokenRows(pair_tensors(p, self.seq_len, self.prompt_width, self.pad_id)) for p in encoded)

    def _encode(self, split: str, pairs: list[PreferencePair]) -> list[EncodedPair]:
        chat = any(pair.conversation is not None for pair in pairs)
        renderer = (
            ChatRenderer(self.tokenizer, self.chat_template, f"the tokenizer '{self.tokenizer_spec}'") if chat else None
        )
        encoded = encode_pairs(pairs, self.tokenizer, self.seq_len, renderer)
        self.dropped_pairs[split] = dropped = len(pairs) - len(encoded)
        if dropped:
            rank_zero_warn(f"data ({split}): dropped {dropped} pairs with no response token within data.seq_len")
        if not encoded:
            raise DistillError(
                f"data: the {split} split has no pairs ({len(pairs)} before dropping those whose prompt fills "
                f"data.seq_len={self.seq_len}; increase data.seq_len or data.max_pairs?)"
            )
        return encoded

    def _split(self, index: int) -> TokenRows:
        self.setup()
        assert self._splits is not None
        return self._splits[index]

    @property
    def train_set(self) -> TokenRows:
        return self._split(0)

    @property
    def val_set(self) -> TokenRows:
        return self._split(1)

    @property
    def test_set(self) -> TokenRows:
        return self._split(2)

    # Loaders (as the text module's: the order depends only on (seed, epoch); val and test unshuffled) ---------
