"""On-policy sampling of multi-turn chats, as TRL's GKD samples them: a conversation's final answer is sampled after
its whole history (earlier answers included, not trained), replaces that answer only, ends at the template's end of
turn (one special token, or several bytes), and only the sampled tokens are labelled."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.data import create_datamodule
from distill.data.chat import ChatRenderer
from distill.data.conversation import parse_conversation
from distill.data.text_rows import IGNORE
from distill.models import create_model
from distill.tasks.causal_lm import CausalLMSettings, response_policy
from distill.tasks.policy import SamplingSettings
from tests.helpers_chat import chat_tokenizer, conversations_file

THREE_TURNS = [
    ("system", "you answer briefly."),
    ("user", "what is a list?"),
    ("assistant", "a list holds items in order."),
    ("user", "how do i sort?"),
    ("assistant", "call sorted on it."),
    ("user", "and in place?"),
    ("assistant", "call sort on the list."),
]


def scripted(model: torch.nn.Module, tokens: list[int]) -> None:
    """Make `model`'s next token at each generation step the next of `tokens` (a hook on its head's output)."""
    steps = iter(tokens)

    def hook(module, inputs, output):
        output = output.clone()
        output[:, -1] = -1e4
        output[:, -1, next(steps)] = 1e4
        return output

    model.get_output_embeddings().register_forward_hook(hook)


def sampled_batch(tmp_path, tokenizer: str, script: list[str]):
    """The training batch of a three-turn chat after the on-policy policy sampled it (greedy, scripted student),
    with the data, the data's own batch and the scripted tokens."""
    source = conversations_file(tmp_path / "chats.jsonl", [THREE_TURNS] * 4)
    template = "chatml" if tokenizer == "bytes" else None
    data = create_datamodule(
        "text", source=str(source), tokenizer=tokenizer, chat_template=template, seq_len=400, packing=False
    )
    data.setup()
    batch = next(iter(data.train_dataloader()))
    encode = data.tokenizer.tokenizer.convert_tokens_to_ids if tokenizer != "bytes" else None
    tokens = [encode(t) for t in script] if encode else [b for piece in script for b in piece.encode()]
    torch.manual_seed(0)
    student = create_model("llama", vocab_size=data.vocab_size, hidden_size=32, intermediate_size=64)
    scripted(student, tokens)
    settings = CausalLMSettings(mode="on_policy", sampling=SamplingSettings(max_new_tokens=40, temperature=0))
    ctx = SimpleNamespace(data=data, recipe=SimpleNamespace(seed=0), teacher_responses=None)
    policy = response_policy(ctx, settings)
    return data, batch, policy.batch(batch, 0, 0, student, None), tokens


@pytest.mark.parametrize(
    ("tokenizer", "script", "stop"),
    [
        ("hf", ["Ġsorted", "Ġit", "<|im_end|>", "Ġlist", "Ġlist"], 3),  # <|im_end|> is one token: eos ids
        ("bytes", ["ok", "<|im_end|>", "\nmore"], 12),  # ten bytes: a stop sequence
    ],
)
def test_the_last_answer_is_sampled_after_the_whole_history_and_stops_at_the_end_of_turn(
    tmp_path, tokenizer, script, stop
):
    spec = chat_tokenizer(tmp_path / "tok", "chatml") if tokenizer == "hf" else "bytes"
    data, batch, sampled, tokens = sampled_batch(tmp_path, spec, script)
    renderer = ChatRenderer(data.tokenizer, data.chat_template, "test")
    history = renderer.render(
        parse_conversation([dict(role=r, content=c) for r, c in THREE_TURNS], "t").as_dicts(6), True
    )
    prompt = data.tokenizer.encode(history)
    for row in range(len(batch["input_ids"])):
        ids, labels = sampled["input_ids"][row], sampled["labels"][row]
        length = int(sampled["attention_mask"][row].sum())
        # the prompt is the whole history through the final turn's generation prompt, as the data wrote it
        assert ids[: len(prompt)].tolist() == prompt == batch["input_ids"][row, : len(prompt)].tolist()
        # the answer is the sampled tokens up to and with the end of turn; nothing after it
        assert ids[len(prompt) : length].tolist() == tokens[:stop]
        # only they are trained: earlier answers are history now
        assert (labels[: len(prompt)] == IGNORE).all() and labels[len(prompt) : length].tolist() == tokens[:stop]
        assert (labels[length:] == IGNORE).all()
    assert data.end_of_turn("student") == [data.tokenizer.encode("<|im_end|>")]


def test_two_tokenizations_sample_the_same_turn_and_end_it_each_their_own_way(tmp_path):
    from distill.data.tokenizers import ByteTokenizer, make_tokenizer
    from distill.tasks.policy import prompts, retokenized, shared_turns

    # the student's row holds two answers, the teacher's (cut shorter) only the first: both sample the first
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE, IGNORE, 7, 8]])
    teacher_labels = torch.tensor([[IGNORE, IGNORE, 5, 6, IGNORE, IGNORE]])
    batch = {
        "input_ids": torch.arange(7)[None],
        "labels": labels,
        "attention_mask": torch.ones(1, 7),
        "teacher_input_ids": torch.arange(10, 16)[None],
        "teacher_labels": teacher_labels,
        "teacher_attention_mask": torch.ones(1, 6),
    }
    turns = shared_turns(batch)
    assert turns == [0] and prompts(batch, "", turns) == [[0]] and prompts(batch, "teacher_", turns) == [[10, 11]]
    assert prompts(batch) == [[0, 1, 2, 3, 4]]  # one tokenization: the last answer
    # an answer ended by the bytes' ten-byte end of turn ends with the other tokenizer's one-token end of turn
    hf = make_tokenizer(chat_tokenizer(tmp_path / "tok", "chatml"))
    end = hf.encode("<|im_end|>")
    response = list(b"call sorted<|im_end|>")
    assert retokenized(response, ByteTokenizer(), hf, [list(b"<|im_end|>")], [end]) == hf.encode("call sorted") + end
    unfinished = list(b"call sorted")  # ran to max_new_tokens: not ended on the other side either
    assert retokenized(unfinished, ByteTokenizer(), hf, [list(b"<|im_end|>")], [end]) == hf.encode("call sorted")
