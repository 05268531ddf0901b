"""The inputs an export is checked on: made from the run's tokenizer (or the recorded image size), never read from
the run's data, which the export does not open. A reloaded export must give the run's student's outputs on any
input; these cover ordinary text, code, non-ASCII text, a rendered conversation and tokens drawn across the whole
vocabulary. A VLM student is checked on text alone (its language model and head; its vision tower is written by
the same `save_pretrained`, but no image input is made here)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import Any

import torch

from distill.data.tokenizers import Tokenizer

PROBE_TEXTS = (
    'def add(x, y):\n    """Return the sum of x and y."""\n    return x + y\n',
    "The quick brown fox jumps over the lazy dog. Ünïcödé ✓ — tabs\tand\nnewlines.",
)
CONVERSATION = [
    {"role": "user", "content": "What does the add function return?"},
    {"role": "assistant", "content": "The sum of its two arguments."},
]
ROW_TOKENS = 48  # per probe row: enough to cover every position kind, small enough for any context length
SEED = 0


def probe_texts(chat_tokenizer: Any = None) -> list[str]:
    """The probe texts, and a conversation rendered by `chat_tokenizer`'s chat template when it has one."""
    texts = list(PROBE_TEXTS)
    if getattr(chat_tokenizer, "chat_template", None):
        # a template with rules of its own (roles, a system turn) renders nothing here: the template check says why
        with contextlib.suppress(Exception):
            texts.append(chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=False))
    return texts


def probe_inputs(
    tokenizer: Tokenizer, chat_tokenizer: Any = None, reserved: Collection[int] = ()
) -> dict[str, torch.Tensor]:
    """Language-model inputs: a row per probe text (bos first where the tokenizer has one) and a row of seeded
    random ids (none of the `reserved` ones: a VLM's image token wants image inputs), padded on the right with the
    pad id and masked."""
    rows = [probe_ids(tokenizer, text)[:ROW_TOKENS] for text in probe_texts(chat_tokenizer)]
    generator = torch.Generator().manual_seed(SEED)
    drawn = torch.randint(0, tokenizer.vocab_size, (ROW_TOKENS,), generator=generator).tolist()
    rows.append([tokenizer.eos_id if i in reserved else i for i in drawn])
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def probe_prompts(tokenizer: Tokenizer, count: int, tokens: int) -> list[dict[str, torch.Tensor]]:
    """`count` prompts of `tokens` ids each, cut from the probe texts repeated (for speculative decoding, which
    takes one prompt at a time)."""
    ids: list[int] = []
    while len(ids) < count * tokens:
        for text in PROBE_TEXTS:
            ids += probe_ids(tokenizer, text)
    return [{"input_ids": torch.tensor([ids[i * tokens : (i + 1) * tokens]])} for i in range(count)]


def probe_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return bos + tokenizer.encode(text)


def probe_images(record: dict[str, Any], count: int = 8) -> torch.Tensor:
    """`count` seeded standard-normal images of the recorded channels and size (what normalized images look like
    to the student)."""
    channels = int(record["model_args"]["student"].get("in_chans") or 3)
    size = int(record["image_size"])
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(count, channels, size, size, generator=generator)
