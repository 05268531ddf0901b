"""Helpers for tests of language-model runs that must train in seconds: a corpus file, a tiny causal-LM recipe on
it, a tiny Llama saved as a Hugging Face folder, and a Qwen-style tokenizer folder (ChatML with special tokens)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import FAST_TRAINER

TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def write_corpus(path: Path, documents: int = 80) -> Path:
    """`documents` short Python snippets as `{"text": ...}` lines."""
    lines = [
        json.dumps({"text": f'def times_{i}(x):\n    """Return x times {i}."""\n    return x * {i}\n'})
        for i in range(documents)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_chats(path: Path, conversations: int = 40) -> Path:
    """`conversations` two-turn chats as `{"messages": [...]}` lines."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} times two?"},
                    {"role": "assistant", "content": f"{i} times two is {2 * i}."},
                ]
            }
        )
        for i in range(conversations)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def lm_recipe(tmp_path: Path, data: dict, student: dict | None = None, teacher: dict | None = None) -> dict:
    """A causal-LM recipe on `data` (merged into small text-data settings) training 2 steps: CE alone without a
    `teacher` section, CE and token KL with one."""
    terms = {"token_kl": {"weight": 0.5}} if teacher is not None else {}
    return {
        "description": "tiny language-model test recipe",
        "task": "causal_lm",
        "seed": 0,
        "run": {"root": str(tmp_path / "runs"), "name": "lm"},
        "data": {"name": "text", "seq_len": 64, "batch_size": 4, "val_fraction": 0.2, **data},
        "student": student or {"name": "llama", **TINY_LLAMA},
        **({"teacher": teacher} if teacher is not None else {}),
        "loss": {"ce_weight": 0.5 if terms else 1.0, "terms": terms},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "scheduler": {"name": "constant"},
        "trainer": {**FAST_TRAINER, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1},
    }


def save_tiny_llama(folder: Path, vocab_size: int) -> Path:
    """A randomly initialized tiny Llama as a `save_pretrained` folder (what `hf:<folder>` loads)."""
    import torch

    from distill.models import create_model

    torch.manual_seed(1)
    create_model("llama", vocab_size=vocab_size, **TINY_LLAMA).save_pretrained(str(folder))
    return folder


def save_chatml_tokenizer(folder: Path) -> Path:
    """A byte-level tokenizer with `<|im_start|>` and `<|im_end|>` as special tokens and a ChatML template, as Qwen's
    tokenizers have them: ids 0-255 bytes, 256-258 pad/bos/eos, 259 `<|im_start|>`, 260 `<|im_end|>`."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from distill.data.chat import BUILT_IN_TEMPLATES
    from distill.export.tokenizer_files import byte_tokenizer_backend

    backend = byte_tokenizer_backend()
    backend.add_special_tokens([AddedToken(token, special=True) for token in ("<|im_start|>", "<|im_end|>")])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    tokenizer.chat_template = BUILT_IN_TEMPLATES["chatml"]
    tokenizer.save_pretrained(str(folder))
    return folder
