"""The data record kept in checkpoints: a run's tokenizer, of each kind, comes back from it encoding exactly as the
run's did (and survives torch.save / torch.load with weights_only), and the sizes each model was built with."""

from __future__ import annotations

import pytest
import torch

from distill.data.digits import DigitsDataModule
from distill.data.record import data_record, tokenizer_from_record, tokenizer_record
from distill.data.tokenizers import ByteTokenizer, HFTokenizer, bpe_tokenizer
from tests.helpers_lm import save_chatml_tokenizer

TEXTS = ["def add(x, y):\n    return x + y", "Ünïcödé ✓ — tabs\tand\nnewlines", "<|im_end|> and <eos>"]


@pytest.mark.parametrize("kind", ["bytes", "bpe", "hf"])
def test_a_tokenizer_comes_back_from_its_record_through_a_checkpoint(kind, tmp_path):
    if kind == "bytes":
        ours = ByteTokenizer()
    elif kind == "bpe":
        ours = bpe_tokenizer(300, TEXTS * 20, tmp_path / "cache")
    else:
        ours = HFTokenizer(str(save_chatml_tokenizer(tmp_path / "tokenizer")))
    torch.save({"record": tokenizer_record(ours)}, tmp_path / "x.ckpt")
    for path in (tmp_path / "cache", tmp_path / "tokenizer"):  # what the run read it from goes away
        if path.exists():
            for child in path.iterdir():
                child.unlink()
    back = tokenizer_from_record(torch.load(tmp_path / "x.ckpt", weights_only=True)["record"])
    assert type(back) is type(ours)
    assert (back.vocab_size, back.pad_id, back.bos_id, back.eos_id) == (
        ours.vocab_size,
        ours.pad_id,
        ours.bos_id,
        ours.eos_id,
    )
    for text in TEXTS:
        assert back.encode(text) == ours.encode(text)
    if kind == "hf":
        assert back.tokenizer.chat_template == ours.tokenizer.chat_template
        assert back.encode("<|im_end|>") == [260]


def test_the_record_of_image_data_holds_the_sizes_models_are_built_with():
    data = DigitsDataModule(batch_size=8)
    assert data_record(data) == {
        "model_args": {"student": {"num_classes": 10, "in_chans": 1}, "teacher": {"num_classes": 10, "in_chans": 1}},
        "image_size": data.image_size,
    }
