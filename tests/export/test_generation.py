"""The end of an assistant's turn, read from a chat template: a special token where the tokenizer has one
(Qwen-style ChatML), the markup as a stop string where it spells it in ordinary tokens, nothing without a
template; and the ids written where generation reads them."""

from __future__ import annotations

from distill.data.tokenizers import ByteTokenizer
from distill.export.generation import TurnEnd, end_of_turn, set_stop_ids
from distill.export.tokenizer_files import hf_tokenizer
from distill.models import create_model
from tests.helpers_lm import TINY_LLAMA, save_chatml_tokenizer


def test_the_end_of_turn_is_the_templates_special_token_or_its_markup(tmp_path):
    from transformers import AutoTokenizer

    specials = AutoTokenizer.from_pretrained(str(save_chatml_tokenizer(tmp_path / "tokenizer")))
    assert end_of_turn(specials) == TurnEnd(ids=[260])  # <|im_end|>
    assert end_of_turn(hf_tokenizer(ByteTokenizer(), "chatml")) == TurnEnd(text="<|im_end|>")
    assert end_of_turn(hf_tokenizer(ByteTokenizer(), None)) == TurnEnd()
    llama3 = (  # Llama 3's shape: a turn ends with its own special token, then nothing
        "{% for m in messages %}<|start|>{{ m['content'] }}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|start|>{% endif %}"
    )
    specials.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|eot|>"]})
    specials.chat_template = llama3
    assert end_of_turn(specials) == TurnEnd(ids=[specials.convert_tokens_to_ids("<|eot|>")])


def test_the_runs_ids_replace_the_libraries_defaults():
    model = create_model("llama", vocab_size=261, **TINY_LLAMA)
    assert (model.config.eos_token_id, model.generation_config.eos_token_id) == (2, 2)  # Llama's, byte 2 here
    assert set_stop_ids(model, ByteTokenizer(), TurnEnd(ids=[260])) == [258, 260]
    assert model.generation_config.eos_token_id == [258, 260] and model.config.eos_token_id == 258
    assert (model.generation_config.bos_token_id, model.generation_config.pad_token_id) == (257, 256)
