"""Tokenizers of the language-model data: bytes, BPE trained offline and cached, Hugging Face (offline only)."""

import re

import pytest

from distill.data import tokenizers
from distill.data.corpus import python_stdlib_corpus
from distill.data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer, make_tokenizer
from distill.errors import DistillError

SAMPLE = "Plain ASCII, then ünïcödé, 日本語 and an emoji 🙂.\n\n\tIndented\r\nlines  with  spaces "


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return python_stdlib_corpus(max_chars=150_000)


@pytest.fixture(scope="module")
def bpe_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("tokenizers")


def test_bytes_round_trip_with_non_ascii():
    tokenizer = make_tokenizer("bytes")
    assert isinstance(tokenizer, ByteTokenizer) and isinstance(tokenizer, Tokenizer)
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (259, 256, 257, 258)
    ids = tokenizer.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert max(ids) < 256
    assert tokenizer.decode(ids) == SAMPLE
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == SAMPLE  # specials dropped


def test_bpe_trains_offline_with_the_requested_vocab_size(texts, bpe_cache):
    tokenizer = make_tokenizer("bpe:320", texts, bpe_cache)
    assert isinstance(tokenizer, BPETokenizer) and isinstance(tokenizer, Tokenizer)
    assert tokenizer.vocab_size == tokenizer.tokenizer.get_vocab_size() == 320
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE
    assert all(tokenizer.decode(tokenizer.encode(text)) == text for text in texts[:50])
    assert len(tokenizer.encode(texts[0])) < len(texts[0].encode("utf-8"))  # merges compress the text
    assert all(0 <= i < 320 for i in tokenizer.encode(" ".join(texts[:20])))


def test_bpe_is_trained_once_then_loaded_from_the_cache(texts, bpe_cache, monkeypatch):
    first = make_tokenizer("bpe:300", texts, bpe_cache)
    assert first.path is not None and first.path.parent == bpe_cache and first.path.exists()
    mtime = first.path.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been loaded")

    monkeypatch.setattr(BPETokenizer, "train", refuse)
    asked = []
    again = make_tokenizer("bpe:300", lambda: asked.append(1) or texts, bpe_cache)  # texts given lazily
    assert again.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert asked == [1]
    assert again.encode(SAMPLE) == first.encode(SAMPLE)
    with pytest.raises(AssertionError, match="cached"):  # other texts or another size: another tokenizer
        make_tokenizer("bpe:300", texts[:-1], bpe_cache)
    assert [p.name for p in bpe_cache.iterdir() if p.suffix == ".tmp"] == []


def test_corrupt_cache_file_is_a_clear_error(texts, bpe_cache):
    path = make_tokenizer("bpe:300", texts, bpe_cache).path
    broken = bpe_cache / "broken"
    broken.mkdir()
    (broken / path.name).write_text("{not json")
    with pytest.raises(DistillError, match="cannot load BPE tokenizer .*delete the file"):
        make_tokenizer("bpe:300", texts, broken)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wordpiece", "unknown tokenizer 'wordpiece' (valid: 'bytes', 'bpe:<vocab_size>'"),
        ("bpe:", "unknown tokenizer 'bpe:'"),
        ("bpe:many", "tokenizer 'bpe:many': the vocabulary size must be an integer"),
        ("bpe:100", "tokenizer 'bpe:100': the vocabulary size must be >= 260"),
        ("hf:", "unknown tokenizer 'hf:'"),
    ],
)
def test_bad_specs_are_clear_errors(spec, message, texts, bpe_cache):
    with pytest.raises(DistillError, match=re.escape(message)):
        make_tokenizer(spec, texts, bpe_cache)


def test_bpe_needs_texts():
    with pytest.raises(DistillError, match="must be trained on a corpus"):
        make_tokenizer("bpe:300")
    with pytest.raises(DistillError, match="no text to train it on"):
        make_tokenizer("bpe:300", ["", ""])


def test_hf_missing_local_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(DistillError, match=re.escape(f"'hf:{missing}': no such local folder")):
        make_tokenizer(f"hf:{missing}")
    with pytest.raises(DistillError, match="no such local folder"):
        make_tokenizer("hf:./no-such-tokenizer")


def test_hf_folder_without_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(DistillError, match=re.escape(f"from the local folder '{tmp_path}'")) as error:
        make_tokenizer(f"hf:{tmp_path}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["distill-tests/no-such-model", "no-such-model-xyz"])
def test_hf_hub_name_offline_is_a_clear_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network
    with pytest.raises(DistillError, match=re.escape(f"'hf:{name}': it is not a local folder")) as error:
        make_tokenizer(f"hf:{name}")
    assert "Hub" in str(error.value) and "save_pretrained" in str(error.value)
    assert "\n" not in str(error.value)


def test_hf_local_folder_loads_and_pads_with_eos(texts, bpe_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import PreTrainedTokenizerFast

    bpe = make_tokenizer("bpe:300", texts, bpe_cache)
    # A tokenizer folder as `save_pretrained` writes it, without a pad token (as GPT-2 and Llama ship).
    PreTrainedTokenizerFast(tokenizer_object=bpe.tokenizer, bos_token="<bos>", eos_token="<eos>").save_pretrained(
        tmp_path / "tok"
    )
    tokenizer = make_tokenizer(f"hf:{tmp_path / 'tok'}")
    assert isinstance(tokenizer, HFTokenizer) and isinstance(tokenizer, Tokenizer)
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) == (300, bpe.bos_id, bpe.eos_id)
    assert tokenizer.pad_id == tokenizer.eos_id  # no pad token: falls back to eos
    assert tokenizer.encode(SAMPLE) == bpe.encode(SAMPLE)  # no special tokens added
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE


def test_fingerprint_depends_on_content_and_order():
    fingerprint = tokenizers.texts_fingerprint
    assert fingerprint(["ab", "c"]) == fingerprint(["ab", "c"])
    assert len({fingerprint(["ab", "c"]), fingerprint(["a", "bc"]), fingerprint(["c", "ab"])}) == 3
