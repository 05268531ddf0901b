"""Tokenizers for the language-model data, named in recipes by a short spec.

- `bytes`: the UTF-8 bytes of the text (256 ids) plus pad/bos/eos; built in, needs no files.
- `bpe:<vocab_size>`: a byte-level BPE trained offline on the training texts with the `tokenizers` library, saved as
  JSON in a cache folder under a hash of (texts, vocab size), so it is trained once.
- `hf:<name_or_path>`: a Hugging Face tokenizer (`transformers.AutoTokenizer`), from a local folder or the Hub.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from distill.data.hub import hub_offline, is_local, split_revision
from distill.errors import DistillError

SPEC_FORMS = "'bytes', 'bpe:<vocab_size>' (e.g. 'bpe:512') or 'hf:<name_or_path>'"
BPE_SPECIALS = ("<pad>", "<bos>", "<eos>")
MIN_BPE_VOCAB = 256 + len(BPE_SPECIALS) + 1  # the byte alphabet, the specials and at least one merge

Texts = Sequence[str] | Callable[[], Sequence[str]]


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids. `encode` adds no special tokens; `decode` drops them."""

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Ids 0..255 are the bytes of the UTF-8 text; then pad=256, bos=257, eos=258 (vocab_size 259)."""

    vocab_size = 259
    pad_id = 256
    bos_id = 257
    eos_id = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids and, per id, the character span of the text it encodes (a character's bytes share one)."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for position, character in enumerate(text):
            encoded = character.encode("utf-8")
            ids.extend(encoded)
            offsets.extend([(position, position + 1)] * len(encoded))
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """A byte-level BPE of the `tokenizers` library, with the specials `<pad>`, `<bos>`, `<eos>`.

    `vocab_size` is the requested size: the embedding size models are built with. A tiny corpus can run out of
    merges before reaching it; the ids above the trained ones are then never produced.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, path: Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.path = path
        ids = [tokenizer.token_to_id(token) for token in BPE_SPECIALS]
        if None in ids:
            raise DistillError(f"BPE tokenizer {path} lacks the special tokens {BPE_SPECIALS}; delete it to retrain")
        self.pad_id, self.bos_id, self.eos_id = ids

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            return cls(RustTokenizer.from_file(str(path)), vocab_size, path)
        except Exception as exc:  # the library raises a bare Exception for a corrupt file
            raise DistillError(f"cannot load BPE tokenizer {path} ({exc}); delete the file to retrain it") from None

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of `vocab_size` ids (specials and the 256 byte symbols included) on `texts`."""
        from tokenizers import Tokenizer as RustTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = RustTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(BPE_SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tokenizer, vocab_size)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(span) for span in encoding.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


class HFTokenizer:
    """A `transformers` tokenizer; pad falls back to eos when the tokenizer has no pad token.

    `vocab_size` is `len(tokenizer)`: the base vocabulary plus added tokens.
    """

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path
        self.tokenizer = _load_hf_tokenizer(name_or_path)
        tokenizer = self.tokenizer
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise DistillError(f"Hugging Face tokenizer '{name_or_path}' has neither an eos nor a sep token")
        self.eos_id: int = eos
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.bos_id: int | None = tokenizer.bos_token_id
        self.vocab_size: int = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        # verbose=False: documents are longer than the model's context before they are cut into rows.
        return self.tokenizer.encode(text, add_special_tokens=False, verbose=False)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise DistillError(
                f"Hugging Face tokenizer '{self.name_or_path}' is not a fast tokenizer: chat data needs its character "
                "offsets (save the model's tokenizer.json with it)"
            )
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name_or_path!r})"


def _load_hf_tokenizer(name_or_path: str) -> Any:
    """A Hugging Face tokenizer from a local folder, or from the Hub as `name` or `name@revision`."""
    path = Path(name_or_path).expanduser()
    if is_local(name_or_path) and not path.exists():
        raise DistillError(f"Hugging Face tokenizer 'hf:{name_or_path}': no such local folder")
    from transformers import AutoTokenizer

    if path.exists():
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # OSError, ValueError, ...: a folder without a usable tokenizer
            raise DistillError(
                f"cannot load Hugging Face tokenizer from the local folder '{name_or_path}': {_first_line(exc)}"
            ) from None
    # Read at each call (huggingface_hub reads it once, at import): HF_HUB_OFFLINE=1 then fails fast, without retries.
    offline = hub_offline()
    repo, revision = split_revision(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(repo, revision=revision, local_files_only=offline)
    except Exception:  # OSError, ValueError, hub errors: all mean "not found from here"
        raise DistillError(
            f"cannot load Hugging Face tokenizer 'hf:{name_or_path}': it is not a local folder, and the Hugging Face "
            f"Hub is {'switched off (HF_HUB_OFFLINE)' if offline else 'unreachable'} or has no such repository "
            "(nor the local Hub cache); where there is network, save it with "
            "AutoTokenizer.from_pretrained(name).save_pretrained(folder) and use 'hf:<folder>'"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library's formatting
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def texts_fingerprint(texts: Sequence[str]) -> str:
    """A hash of the texts' content and order: the identity of the corpus a tokenizer is trained on."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def bpe_tokenizer(vocab_size: int, texts: Sequence[str], cache_dir: str | os.PathLike) -> BPETokenizer:
    """The BPE trained on `texts` with `vocab_size` ids: loaded from `cache_dir` if trained before, else trained."""
    if vocab_size < MIN_BPE_VOCAB:
        raise DistillError(f"tokenizer 'bpe:{vocab_size}': the vocabulary size must be >= {MIN_BPE_VOCAB}")
    if not any(texts):
        raise DistillError(f"tokenizer 'bpe:{vocab_size}': no text to train it on")
    key = hashlib.sha256(f"{texts_fingerprint(texts)}:{vocab_size}".encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser()
    path = folder / f"bpe-{vocab_size}-{key}.json"
    if path.exists():
        return BPETokenizer.load(path, vocab_size)
    tokenizer = BPETokenizer.train(texts, vocab_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Written to a temporary file then renamed: a concurrent run never reads a half-written tokenizer.
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
        tokenizer.tokenizer.save(str(temporary))
        os.replace(temporary, path)
    except OSError as exc:
        raise DistillError(
            f"cannot save the BPE tokenizer to '{folder}' ({exc.strerror}): set data.tokenizer_cache"
        ) from None
    tokenizer.path = path
    return tokenizer


def make_tokenizer(spec: str, corpus_texts: Texts | None = None, cache_dir: str | os.PathLike = ".") -> Tokenizer:
    """The tokenizer named by `spec`: 'bytes', 'bpe:<vocab_size>' or 'hf:<name_or_path>'.

    Args:
        spec: The tokenizer's spec.
        corpus_texts: The texts a BPE is trained on, or a function returning them (called only for 'bpe:').
        cache_dir: Where trained BPE tokenizers are saved and found again.
    """
    kind, _, argument = spec.partition(":")
    if spec == "bytes":
        return ByteTokenizer()
    if kind == "bpe" and argument:
        try:
            vocab_size = int(argument)
        except ValueError:
            raise DistillError(
                f"tokenizer '{spec}': the vocabulary size must be an integer (valid: {SPEC_FORMS})"
            ) from None
        if corpus_texts is None:
            raise DistillError(f"tokenizer '{spec}' must be trained on a corpus, and none was given")
        texts = corpus_texts() if callable(corpus_texts) else corpus_texts
        return bpe_tokenizer(vocab_size, texts, cache_dir)
    if kind == "hf" and argument:
        return HFTokenizer(argument)
    raise DistillError(f"unknown tokenizer '{spec}' (valid: {SPEC_FORMS})")
