"""A run's tokenizer as a Hugging Face tokenizer folder (`tokenizer.json` and its config), chat template included,
so that `AutoTokenizer.from_pretrained(folder)` encodes exactly as the run did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.data.chat import BUILT_IN_TEMPLATES
from distill.data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer
from distill.errors import DistillError


def byte_symbols() -> list[str]:
    """The printable character standing for each byte 0..255 in byte-level BPE vocabularies: printable Latin-1
    bytes stand for themselves, the others for the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def byte_tokenizer_backend() -> Any:
    """The `bytes` tokenizer as a `tokenizers` object: one token per UTF-8 byte (ids 0..255), then pad, bos, eos."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<bos>", "<eos>")])
    return backend


def hf_tokenizer(tokenizer: Any, chat_template: str | None) -> Any:
    """The run's tokenizer as a `transformers` tokenizer, with `chat_template` (a built-in name or Jinja) set when
    the run used one in place of the tokenizer's own."""
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, HFTokenizer):
        exported = tokenizer.tokenizer
    elif isinstance(tokenizer, BPETokenizer | ByteTokenizer):
        backend = byte_tokenizer_backend() if isinstance(tokenizer, ByteTokenizer) else tokenizer.tokenizer
        names = ("<pad>", "<bos>", "<eos>")
        exported = PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token=names[0], bos_token=names[1], eos_token=names[2]
        )
        ids = [exported.convert_tokens_to_ids(name) for name in names]
        if ids != [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id]:
            raise DistillError(f"export: the tokenizer's special ids {ids} differ from the run's")
    else:
        raise DistillError(f"export: a tokenizer of type {type(tokenizer).__name__} cannot be exported")
    if chat_template is not None:
        exported.chat_template = BUILT_IN_TEMPLATES.get(chat_template, chat_template)
    return exported


def save_tokenizer(tokenizer: Any, chat_template: str | None, folder: Path) -> Any:
    exported = hf_tokenizer(tokenizer, chat_template)
    exported.save_pretrained(str(folder))
    return exported
