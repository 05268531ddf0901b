"""Preference pairs `(prompt, chosen, rejected)`: read from JSONL, or made offline from a plain-text corpus, then
tokenized into right-padded chosen/rejected rows (prompt masked with -100) and left-padded prompts."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from distill.data.chat import ChatRenderer, encode_conversation
from distill.data.conversation import Conversation, Message, parse_conversation
from distill.data.corpus import PYTHON_STDLIB, Pair, json_lines
from distill.data.tables import read_table
from distill.data.text_rows import IGNORE, TokenRow, _word_start, encode_row, has_target, row_tensors, text_rows
from distill.data.tokenizers import Tokenizer
from distill.errors import DistillError

PAIR_KEYS = ("prompt", "chosen", "rejected")
PAIR_FORM = '{"prompt": str, "chosen": str, "rejected": str}'
PREFERENCE_FORMS = (
    f"'{PYTHON_STDLIB}', a .jsonl file of {PAIR_FORM} lines, a folder of them, or a Hugging Face datasets source "
    "with those columns ('hf:<dataset>', a save_to_disk folder, .parquet files)"
)
SIDES = ("chosen", "rejected")

T = TypeVar("T")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two responses to it: `chosen` is preferred to `rejected`."""

    prompt: str
    chosen: str
    rejected: str
    conversation: Conversation | None = None  # a chat prompt (its turns before the two answers); `prompt` is ""

    def swapped(self) -> PreferencePair:
        return PreferencePair(self.prompt, self.rejected, self.chosen, self.conversation)


# Sources ------------------------------------------------------------------------------------------------------------


def read_preference_jsonl(source: str, columns: Mapping[str, str] | None = None) -> list[PreferencePair]:
    """The pairs of a .jsonl file, or of every .jsonl file under a folder (sorted by path), keys renamed by
    `columns`; blank lines skipped."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DistillError(f"data.source: no such file or folder '{source}' (use {PREFERENCE_FORMS})")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        if not files:
            raise DistillError(f"data.source: folder '{source}' holds no .jsonl files (use {PREFERENCE_FORMS})")
    elif path.suffix == ".jsonl":
        files = [path]
    else:
        raise DistillError(f"data.source: '{source}' is not a .jsonl file (use {PREFERENCE_FORMS})")
    pairs = [pair for file in files for pair in _read_pairs(file, columns)]
    if not pairs:
        raise DistillError(f"data.source: '{source}' holds no preference pairs")
    return pairs


def read_preference_table(
    source: str, split: str, revision: str | None, columns: Mapping[str, str] | None
) -> list[PreferencePair]:
    """The pairs of a Hugging Face `datasets` source: prompt, chosen and rejected text columns, or chosen and
    rejected chats (the prompt column then optional)."""
    pairs = []
    for number, record in enumerate(read_table(source, [PAIR_KEYS, SIDES], columns, split, revision)):
        pairs.append(record_pair(record, f"data.source '{source}' ({split}) row {number}"))
    if not pairs:
        raise DistillError(f"data.source '{source}' ({split}) holds no preference pairs")
    return pairs


def _read_pairs(file: Path, columns: Mapping[str, str] | None) -> list[PreferencePair]:
    pairs: list[PreferencePair] = []
    for where, record in json_lines(file, columns=columns):
        if not isinstance(record, dict):
            raise DistillError(f"{where}: expected {PAIR_FORM}, got {type(record).__name__}")
        pairs.append(record_pair(record, where))
    return pairs


def record_pair(record: dict, where: str) -> PreferencePair:
    """A pair from a record of texts, or of conversations: `chosen`/`rejected` whole chats that differ only in
    their last (assistant) turn, as UltraFeedback ships them, or `prompt` a list of turns and the answers texts."""
    if any(isinstance(record.get(key), list) for key in PAIR_KEYS):
        return _chat_pair(record, where)
    problems = _problems(record)
    if problems:
        raise DistillError(f"{where}: expected {PAIR_FORM}; {'; '.join(problems)}")
    return PreferencePair(*(record[key] for key in PAIR_KEYS))


def _chat_pair(record: dict, where: str) -> PreferencePair:
    answers = []
    prompts = []
    for side in SIDES:
        value = record.get(side)
        if isinstance(value, str):
            answers.append(value)
            continue
        chat = parse_conversation(value, f"{where} ({side})")
        if chat.messages[-1].role != "assistant":
            raise DistillError(f"{where}: the {side} conversation does not end with an assistant turn")
        answers.append(chat.messages[-1].content)
        prompts.append(chat.messages[:-1])
    if isinstance(record.get("prompt"), list):
        prompts.append(parse_conversation(record["prompt"], f"{where} (prompt)", needs_answer=False).messages)
    if not prompts or any(p != prompts[0] for p in prompts):
        raise DistillError(f"{where}: chosen and rejected must follow the same turns (a chat prompt) before answering")
    if not prompts[0]:
        raise DistillError(f"{where}: the chats have no turn before the answers")
    return PreferencePair("", answers[0], answers[1], Conversation(prompts[0]))


def _problems(record: dict) -> list[str]:
    """What keeps a JSON object from being a pair: missing keys, values that are not strings."""
    missing = [key for key in PAIR_KEYS if key not in record]
    wrong = [f"{key} ({type(record[key]).__name__})" for key in PAIR_KEYS if not isinstance(record.get(key, ""), str)]
    return [f"missing {', '.join(missing)}"] * bool(missing) + [f"not a string: {', '.join(wrong)}"] * bool(wrong)


def corpus_pair(
    document: str, prompt_chars: int, response_chars: int, rng: random.Random, corruption: str = "shuffle"
) -> PreferencePair | None:
    """A pair cut from a document: its start, its real continuation (chosen), and that continuation corrupted
    (rejected): its words shuffled ('shuffle') or one of its words replaced by another of them ('replace'). None when
    the continuation has fewer than two different words (nothing to corrupt).

    The prompt ends before the whitespace at or before `prompt_chars`; the continuation keeps its leading whitespace
    and ends at the word boundary at or before `response_chars` further characters.
    """
    prompt, chosen = _cut(document, prompt_chars, response_chars)
    rejected = CORRUPTIONS[corruption](chosen, rng)
    return None if not prompt or rejected is None else PreferencePair(prompt, chosen, rejected)


def corpus_pairs(
    document: str, prompt_chars: int, response_chars: int, rng: random.Random, corruption: str, windows: int
) -> list[PreferencePair]:
    """Up to `windows` pairs cut, as `corpus_pair` cuts one, from consecutive stretches of a document: each next
    stretch starts after the previous chosen response (leading whitespace dropped); a stretch with nothing to
    corrupt gives no pair. One `rng` for all, so the first pair is the same whatever `windows` is."""
    pairs: list[PreferencePair] = []
    rest = document
    for _ in range(windows):
        if not rest:
            break
        pair = corpus_pair(rest, prompt_chars, response_chars, rng, corruption)
        pairs += [pair] if pair is not None else []
        prompt, chosen = _cut(rest, prompt_chars, response_chars)
        rest = rest[max(1, len(prompt) + len(chosen)) :].lstrip()
    return pairs


def _cut(document: str, prompt_chars: int, response_chars: int) -> tuple[str, str]:
    """`(prompt, continuation)` as `corpus_pair` cuts them, both right-stripped."""
    prompt = document[: _word_end(document, prompt_chars)].rstrip()
    end = len(prompt) + _word_end(document[len(prompt) :], response_chars)
    return prompt, document[len(prompt) : end].rstrip()


def replace_word(text: str, rng: random.Random) -> str | None:
    """`text` with one word (a run of non-whitespace) replaced by a different word of the same text, so the pair
    shares everything before that word; None when the text has fewer than two different words."""
    parts = re.split(r"(\s+)", text)
    slots = [i for i in range(0, len(parts), 2) if parts[i]]
    words = sorted({parts[i] for i in slots})
    if len(words) < 2:
        return None
    slot = rng.choice(slots)
    parts[slot] = rng.choice([w for w in words if w != parts[slot]])
    return "".join(parts)


def _word_end(text: str, chars: int) -> int:
    """The end of `text[:chars]` cut before a whitespace (the whole text when it is no longer)."""
    return len(text) if len(text) <= chars else _word_start(text, chars)


def shuffle_words(text: str, rng: random.Random) -> str | None:
    """`text` with its words (runs of non-whitespace) in another order and its whitespace where it was.

    Length, characters and line layout are unchanged: only the word order differs. None when the text has fewer than
    two different words.
    """
    parts = re.split(r"(\s+)", text)  # words at even indices ('' where the text starts or ends with whitespace)
    slots = [i for i in range(0, len(parts), 2) if parts[i]]
    words = [parts[i] for i in slots]
    if len(set(words)) < 2:
        return None
    order = words[:]
    rng.shuffle(order)
    if order == words:  # rotating a sequence of >= 2 different words always changes it
        order = words[1:] + words[:1]
    for slot, word in zip(slots, order, strict=True):
        parts[slot] = word
    return "".join(parts)


def split_train_val(items: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """`(train, val)`: `val_fraction` of the items (at least one, at most all but one) drawn by `seed`; each part
    keeps the items' order. The same split as the `text` data module's, so a BPE trained on the same training split
    is the same tokenizer."""
    val_count = min(len(items) - 1, max(1, round(len(items) * val_fraction)))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    val = set(order[:val_count])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


def halve(items: Sequence[T], seed: int) -> tuple[list[T], list[T]]:
    """Two disjoint halves of `items` drawn by `seed` (their sizes differ by at most one), each in the items' order;
    a single item is in both, so neither half is empty."""
    if len(items) < 2:
        return list(items), list(items)
    return split_train_val(items, 0.5, seed)


# Rows ---------------------------------------------------------------------------------------------------------------

EncodedPair = tuple[TokenRow, TokenRow]  # (chosen, rejected), both starting with the same prompt tokens


def encode_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Tokenizer, seq_len: int, renderer: ChatRenderer | None = None
) -> list[EncodedPair]:
    """Each pair as two rows `[bos] prompt response [eos]` cut to `seq_len` (the response first), or, for a chat
    pair, each answer after the chat prompt as `renderer` (the chat template) writes them, trained on the answer
    and its end-of-turn markup; the pairs where either side keeps no response token are left out."""
    encoded = []
    for pair in pairs:
        if pair.conversation is not None:
            if renderer is None:
                raise DistillError("data: chat preference pairs need a chat template (data.chat_template)")
            chosen, rejected = (
                encode_answer(pair.conversation, answer, tokenizer, renderer, seq_len)
                for answer in (pair.chosen, pair.rejected)
            )
        else:
            rows = text_rows([Pair(pair.prompt, pair.chosen), Pair(pair.prompt, pair.rejected)])
            chosen, rejected = (encode_row(row, tokenizer, seq_len) for row in rows)
        if has_target(chosen) and has_target(rejected):
            encoded.append((chosen, rejected))
    return encoded


def encode_answer(prompt: Conversation, answer: str, tokenizer: Any, renderer: ChatRenderer, seq_len: int) -> TokenRow:
    """The chat prompt and an assistant answer to it, rendered as one conversation; the answer's tokens trained."""
    chat = Conversation((*prompt.messages, Message("assistant", answer)))
    return encode_conversation(chat, tokenizer, renderer, seq_len, last_turn_only=True)


def prompt_length(row: TokenRow) -> int:
    """The number of prompt tokens (bos included) at the start of a row: its first trained position."""
    return next(i for i, label in enumerate(row.labels) if label != IGNORE)


def pair_tensors(pairs: Sequence[EncodedPair], seq_len: int, prompt_width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`chosen_*` and `rejected_*` rows (`input_ids`, `attention_mask`, `labels`) right-padded to `seq_len`,
    `prompt_input_ids` and `prompt_attention_mask` left-padded to `prompt_width`, and `prompt_lengths`."""
    tensors: dict[str, torch.Tensor] = {}
    for index, side in enumerate(SIDES):
        rows = row_tensors([pair[index] for pair in pairs], seq_len, pad_id)
        tensors.update({f"{side}_{key}": value for key, value in rows.items()})
    lengths = [prompt_length(chosen) for chosen, _ in pairs]
    ids = torch.full((len(pairs), prompt_width), pad_id, dtype=torch.int32)  # (N, P)
    mask = torch.zeros((len(pairs), prompt_width), dtype=torch.bool)
    for i, ((chosen, _), n) in enumerate(zip(pairs, lengths, strict=True)):
        ids[i, prompt_width - n :] = torch.tensor(chosen.ids[:n], dtype=torch.int32)
        mask[i, prompt_width - n :] = True
    tensors.update(prompt_input_ids=ids, prompt_attention_mask=mask, prompt_lengths=torch.tensor(lengths))
    return tensors


CORRUPTIONS = {"shuffle": shuffle_words, "replace": replace_word}  # how a corpus pair's rejected response is made
