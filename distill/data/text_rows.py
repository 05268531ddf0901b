"""Rows for causal-LM batches: documents cut, packed or padded into token rows with -100 labels where nothing is
trained (prompt and padding), optionally tokenized twice (student and teacher tokenizers) from the same text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from distill.data.corpus import Documents, Pair
from distill.data.tokenizers import Tokenizer

IGNORE = -100  # label of positions that are not trained on (prompt, padding)
MIN_SEQ_LEN = 8


@dataclass(frozen=True)
class Piece:
    """A span of a row's text: trained on (text, response) or not (prompt); `eos` ends a document after it."""

    text: str
    trained: bool = True
    eos: bool = False


@dataclass(frozen=True)
class TextRow:
    """One row as text, before tokenization; `bos` starts it with the tokenizer's bos token (if it has one);
    `cut_trained`: None when the row is whole, else whether the text cut off it (by `fit_row`) was trained on."""

    pieces: tuple[Piece, ...]
    bos: bool = False
    cut_trained: bool | None = None


@dataclass(frozen=True)
class TokenRow:
    """A row's tokens and labels, not padded; `truncated`: tokens were cut off its end, `cut_in_response`: the first
    token cut was a trained one (an answer lost its end, or more), not a prompt's; `positions`: the position ids of
    a row packed from several conversations (each starts at 0), None for one sequence."""

    ids: list[int]
    labels: list[int]
    truncated: bool = False
    cut_in_response: bool = False
    positions: list[int] | None = None


def cut_row(ids: list[int], labels: list[int], max_len: int | None) -> TokenRow:
    """The row of `ids` and `labels` cut to `max_len` tokens (None: not cut), saying where it was cut."""
    if max_len is None or len(ids) <= max_len:
        return TokenRow(ids, labels)
    return TokenRow(ids[:max_len], labels[:max_len], truncated=True, cut_in_response=labels[max_len] != IGNORE)


class TokenRows(Dataset):
    """Rows of equal length as int tensors; items are dicts of LongTensors `[T]` (default collate stacks them), and
    with `indexed` the row's `index` (so that per-row stores, such as the teacher cache, can find it)."""

    def __init__(self, tensors: dict[str, torch.Tensor], indexed: bool = False) -> None:
        self.tensors = tensors
        self.indexed = indexed

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = {key: value[index].long() for key, value in self.tensors.items()}
        return {**row, "index": torch.tensor(index)} if self.indexed else row


def text_rows(documents: Documents) -> list[TextRow]:
    """One row per document (ending in eos) or per pair (prompt not trained on, response ending in eos)."""
    return [
        TextRow((Piece(d.prompt, trained=False), Piece(d.response, eos=True)), bos=True)
        if isinstance(d, Pair)
        else TextRow((Piece(d, eos=True),), bos=True)
        for d in documents
    ]


def pack_tokens(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> list[TokenRow]:
    """The texts' tokens joined by eos and cut into rows of `seq_len`; only the last row may be shorter."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer.encode(text))
        stream.append(tokenizer.eos_id)
    return [TokenRow(stream[i : i + seq_len], stream[i : i + seq_len]) for i in range(0, len(stream), seq_len)]


def encode_row(row: TextRow, tokenizer: Tokenizer, max_len: int | None) -> TokenRow:
    """The row's tokens and labels (IGNORE on untrained pieces), cut to `max_len` tokens (None: not cut)."""
    ids: list[int] = []
    labels: list[int] = []
    if row.bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
        labels.append(tokenizer.bos_id if row.pieces[0].trained else IGNORE)
    for piece in row.pieces:
        tokens = tokenizer.encode(piece.text) + ([tokenizer.eos_id] if piece.eos else [])
        ids.extend(tokens)
        labels.extend(tokens if piece.trained else [IGNORE] * len(tokens))
    row_cut = cut_row(ids, labels, max_len)
    if row.cut_trained is None or row_cut.truncated:
        return row_cut
    return TokenRow(ids, labels, truncated=True, cut_in_response=row.cut_trained)  # cut as text, before tokens


def has_target(row: TokenRow) -> bool:
    """Whether any position of the row is trained on (a pair whose response was cut entirely is not)."""
    return any(label != IGNORE for label in row.labels)


def row_tensors(rows: Sequence[TokenRow], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`input_ids` and `labels` (int32) and `attention_mask` (bool), right-padded to `length`; with packed rows also
    `position_ids` (int32), the padding after a row's last conversation numbered as a sequence of its own (0, 1,
    ...) so that models that find packed sequences by their positions keep it apart."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.int32)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.int32)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    packed = any(row.positions is not None for row in rows)
    positions = torch.zeros((len(rows), length), dtype=torch.int32)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.tensor(row.ids, dtype=torch.int32)
        labels[i, :n] = torch.tensor(row.labels, dtype=torch.int32)
        mask[i, :n] = True
        if packed:
            own = row.positions if row.positions is not None else list(range(n))
            positions[i, :n] = torch.tensor(own, dtype=torch.int32)
            positions[i, n:] = torch.arange(length - n, dtype=torch.int32)
    tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {**tensors, "position_ids": positions} if packed else tensors


# Rows at the text level (for a teacher with its own tokenizer) ------------------------------------------------------


def fit_prefix(text: str, tokenizer: Tokenizer, budget: int, chars_per_token: float | None = None) -> tuple[str, int]:
    """The longest prefix of `text` found that takes <= `budget` tokens, cut before whitespace where possible.

    Returns the prefix and its token count. `chars_per_token` (the text's typical ratio) saves encoding the whole
    text when it is long; the prefix then ends about where `budget` tokens end.
    """
    if budget <= 0 or not text:
        return "", 0
    if chars_per_token is None:
        count = len(tokenizer.encode(text))
        if count <= budget:
            return text, count
        chars_per_token = len(text) / count
    end = min(len(text), int(budget * chars_per_token * 1.15) + 1)
    while end > 0:
        cut = end if end == len(text) else _word_start(text, end)
        count = len(tokenizer.encode(text[:cut]))
        if count <= budget:
            return text[:cut], count
        end = min(cut - 1, int(cut * budget / count * 0.97))
    return "", 0


def _word_start(text: str, end: int) -> int:
    """The last whitespace position in `text[end // 2 : end + 1]` (the next piece starts with it), else `end`."""
    for i in range(end, end // 2, -1):
        if text[i].isspace():
            return i
    return end


def fit_row(row: TextRow, tokenizer: Tokenizer, seq_len: int) -> TextRow:
    """The row cut at the text level so that it takes <= `seq_len` tokens (the pieces that fit, then a prefix)."""
    room = seq_len - int(row.bos and tokenizer.bos_id is not None)
    pieces: list[Piece] = []
    for piece in row.pieces:
        text, count = fit_prefix(piece.text, tokenizer, room - piece.eos)
        if text == piece.text:
            pieces.append(piece)
            room -= count + piece.eos
            continue
        text, _ = fit_prefix(piece.text, tokenizer, room)  # cut: no eos, so one more token of text fits
        if text:
            pieces.append(Piece(text, piece.trained, eos=False))
        return TextRow(tuple(pieces), row.bos, cut_trained=piece.trained)
    return TextRow(tuple(pieces), row.bos)


def pack_text(texts: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> list[TextRow]:
    """Documents joined by eos and cut into rows of about `seq_len` tokens (at most `seq_len`), as text pieces."""
    rows: list[TextRow] = []
    pieces: list[Piece] = []
    room = seq_len
    for text in texts:
        ratio = len(text) / max(1, len(tokenizer.encode(text)))
        rest = text
        while rest:
            head, count = fit_prefix(rest, tokenizer, room - 1, ratio)  # room for the eos if the document ends
            if head == rest:
                pieces.append(Piece(rest, eos=True))
                room -= count + 1
                rest = ""
            else:
                if not head and not pieces:  # a single character longer than a row: cannot happen for seq_len >= 8
                    head = rest[0]
                if head:
                    pieces.append(Piece(head))
                    rest = rest[len(head) :]
                rows.append(TextRow(tuple(pieces)))
                pieces, room = [], seq_len
            if room <= 1:
                rows.append(TextRow(tuple(pieces)))
                pieces, room = [], seq_len
    if pieces:
        rows.append(TextRow(tuple(pieces)))
    return rows
