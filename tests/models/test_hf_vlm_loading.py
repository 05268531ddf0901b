"""`hf:<path>` loads LLaVA-style VLM checkpoints with AutoModelForImageTextToText, text models as causal LMs."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration

from distill.errors import DistillError
from distill.models import create_model
from tests.helpers_vlm import tiny_llava

TEXT = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for key, value in a_state.items():
        assert torch.equal(value, b_state[key]), key


def test_a_llava_checkpoint_loads_as_a_vlm(tmp_path):
    saved = tiny_llava(vocab_size=64, image_token_id=4)
    saved.save_pretrained(tmp_path)
    loaded = create_model("hf:" + str(tmp_path))
    assert type(loaded) is LlavaForConditionalGeneration
    assert_same_weights(saved, loaded)
    ids = torch.tensor([[2, 4, 4, 4, 4, 5, 6]])
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = saved(input_ids=ids, pixel_values=pixels).logits
        assert torch.allclose(loaded.eval()(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-6)


def test_a_llava_checkpoint_checks_the_vocabulary(tmp_path):
    tiny_llava(vocab_size=64, image_token_id=4).save_pretrained(tmp_path)
    assert create_model("hf:" + str(tmp_path), vocab_size=64) is not None
    with pytest.raises(DistillError, match=r"its vocabulary \(64\) is smaller than the tokenizer's \(65\)"):
        create_model("hf:" + str(tmp_path), vocab_size=65)


def test_a_text_checkpoint_still_loads_as_a_causal_lm(tmp_path):
    torch.manual_seed(0)
    saved = LlamaForCausalLM(LlamaConfig(**TEXT))
    saved.save_pretrained(tmp_path)
    loaded = create_model("hf:" + str(tmp_path))
    assert type(loaded) is LlamaForCausalLM
    assert_same_weights(saved, loaded)


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_an_unreachable_model_is_a_one_line_error(tmp_path, where):
    path = tmp_path / "missing" if where == "missing" else tmp_path
    with pytest.raises(DistillError) as info:
        create_model("hf:" + str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"hf:{path}: cannot load it")
