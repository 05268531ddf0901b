"""The causal-LM task on packed and tightly padded rows: a packed row's logits are each conversation's own (the
models see position ids that restart, and attention stays inside each conversation), and the teacher cache read and
written by batches padded to their longest row trains exactly as full-width rows without a cache."""

from __future__ import annotations

import pytest
import torch

from distill.data import create_datamodule
from distill.data.padding import PadToLongest
from distill.models import create_model
from distill.tasks.causal_lm import CausalLMTask
from distill.tasks.lm_outputs import row_inputs, run_lm
from distill.teachers.token_cache import TokenTeacherCache
from losses import TokenDivergenceLoss
from tests.data.test_chat_rows import chats
from tests.helpers_chat import conversations_file


def tiny_llama(seed: int, attention: str = "sdpa", width: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("llama", hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2)
    model.set_attn_implementation(attention)
    return model.float().eval()


def chat_rows(tmp_path, **kwargs) -> dict[str, torch.Tensor]:
    source = conversations_file(tmp_path / "chats.jsonl", chats(12))
    data = create_datamodule("text", source=str(source), chat_template="chatml", val_fraction=0.25, **kwargs)
    data.setup()
    return {key: value.long() for key, value in data.train_set.tensors.items()}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_packed_row_gives_each_conversation_its_own_logits(tmp_path, attention, chunked):
    rows = chat_rows(tmp_path, packing=True, seq_len=512)
    model = tiny_llama(0, attention)
    first = {key: value[:1] for key, value in rows.items()}  # a row of several conversations
    starts = (first["position_ids"][0] == 0).nonzero().flatten().tolist()
    length = int(first["attention_mask"].sum())
    assert len(starts) >= 3 and starts[-1] >= length  # conversations, then padding of its own
    with torch.no_grad():
        packed = run_lm(model, first["input_ids"], row_inputs(first), {}, chunked)
        outputs = packed.logits if not chunked else packed.head(packed.hidden)  # (1, T-1, V)
        for start, end in zip(starts, starts[1:], strict=False):
            ids = first["input_ids"][:, start:end]
            alone = model(input_ids=ids).logits[:, :-1]  # the conversation by itself, no padding
            torch.testing.assert_close(outputs[:, start : end - 1], alone, rtol=1e-5, atol=1e-5)
        # the control: read by its attention mask alone, later conversations see the earlier ones
        crossed = run_lm(model, first["input_ids"], {"attention_mask": first["attention_mask"]}, {}, False).logits
        second = slice(starts[1], starts[2] - 1)
        assert not torch.allclose(crossed[:, second], outputs[:, second], atol=1e-3)


def test_the_teacher_cache_written_by_tight_batches_trains_as_full_rows(tmp_path):
    rows = chat_rows(tmp_path, packing=False, seq_len=320)
    indices = torch.arange(4)
    full = {**{key: value[:4] for key, value in rows.items()}, "index": indices}
    tight = PadToLongest(8)([{key: value[i] for key, value in full.items()} for i in range(4)])
    assert tight["input_ids"].shape[1] < full["input_ids"].shape[1]
    student, teacher = tiny_llama(0), tiny_llama(1, width=48)
    cache = TokenTeacherCache(tmp_path / "cache", {"t": 1}, {"train": 8}, positions=319, vocab_size=259, top_k=None)
    terms = {"kl": (1.0, TokenDivergenceLoss("forward_kl"))}

    def loss(batch, stored) -> torch.Tensor:
        task = CausalLMTask(student, teacher, terms, ce_weight=0.5, teacher_cache=cache if stored else None)
        return task.training_step(batch, 0).detach()

    live = loss(full, stored=False)
    written = loss(tight, stored=True)  # computes the teacher on the tight batch, stores it, trains on what it read
    stored = cache.read("train", indices)
    assert stored is not None and (stored.logprobs[:, tight["input_ids"].shape[1] - 1 :] == 0).all()
    read_full = loss(full, stored=True)  # full-width rows read the zeros past the tight width: never trained on
    torch.testing.assert_close(written, live, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(read_full, live, rtol=1e-5, atol=1e-6)
