"""Conversation rows as practitioners' trainers build them: packed several to a row with positions restarting at
each and nothing trained across a boundary, batches padded to their longest row per side, conversations cut at the
row length counted per side by where the cut fell, and message contents given as lists of text parts."""

from __future__ import annotations

import pytest
import torch

from distill.data import create_datamodule
from distill.data.conversation import parse_conversation
from distill.data.padding import PadToLongest, padded_width
from distill.data.text_rows import IGNORE
from distill.errors import DistillError
from tests.helpers_chat import chat_tokenizer, conversations_file


def chats(count: int) -> list[list[tuple[str, str]]]:
    """Conversations of one to three turns with answers of different lengths."""
    found = []
    for i in range(count):
        turns = [("user", f"question {i}?"), ("assistant", "answer " + "x" * (3 * i % 17))]
        turns += [("user", "and then?"), ("assistant", f"then {i}.")] * (i % 3)
        found.append(turns)
    return found


def chat_data(tmp_path, count: int = 24, **kwargs):
    source = conversations_file(tmp_path / "chats.jsonl", chats(count))
    settings = {"chat_template": "chatml", "seq_len": 256, "batch_size": 4, "val_fraction": 0.25, **kwargs}
    data = create_datamodule("text", source=str(source), **settings)
    data.setup()
    return data


def test_packed_rows_hold_whole_conversations_and_train_nothing_across_a_boundary(tmp_path):
    packed = chat_data(tmp_path, packing=True, seq_len=640).train_set.tensors
    alone = chat_data(tmp_path, packing=False, seq_len=640).train_set.tensors
    assert len(packed["input_ids"]) < len(alone["input_ids"]) / 2  # several conversations per row
    starts = packed["position_ids"] == 0
    counts = (starts & packed["attention_mask"]).sum(dim=1)
    assert int((counts == 1).sum()) <= 1  # best-fit: at most one row is left with one conversation here
    for row in range(len(packed["input_ids"])):
        real = packed["attention_mask"][row]
        # each conversation restarts at 0 and counts up; the padding after the last is a sequence of its own
        positions = packed["position_ids"][row][real].tolist()
        assert all(b == a + 1 or b == 0 for a, b in zip(positions, positions[1:], strict=False))
        assert packed["position_ids"][row][~real].tolist() == list(range(int((~real).sum())))
    # a position that starts a conversation is never a target: nothing predicts it from the one before
    assert (packed["labels"][starts] == IGNORE).all()
    # the same conversations, token for token and label for label, as one conversation per row
    assert sorted(conversations(packed)) == sorted(conversations(alone))


def conversations(rows: dict[str, torch.Tensor]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each conversation's `(ids, labels)` in rows packed or not (a packed row's positions restart at each)."""
    found = []
    for row in range(len(rows["input_ids"])):
        real = rows["attention_mask"][row]
        ids, labels = rows["input_ids"][row][real].tolist(), rows["labels"][row][real].tolist()
        positions = rows["position_ids"][row][real].tolist() if "position_ids" in rows else [1] * len(ids)
        starts = [i for i, p in enumerate(positions) if p == 0 or i == 0] + [len(ids)]
        found += [(tuple(ids[a:b]), tuple(labels[a:b])) for a, b in zip(starts, starts[1:], strict=False)]
    return found


def test_a_batch_pads_to_its_longest_row_on_each_side(tmp_path):
    rows = {
        "input_ids": torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]),
        "teacher_input_ids": torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 9, 9]]),
        "teacher_attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
    }
    items = [{key: value[i] for key, value in rows.items()} for i in range(2)]
    batch = PadToLongest(multiple=2)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 0, 0]]  # 3 rounded up to 4
    assert batch["teacher_input_ids"].shape == (2, 6)  # its own longest row: nothing cut
    assert padded_width(torch.ones(1, 10), 8) == 10  # never wider than the rows

    data = chat_data(tmp_path, packing=False, padding="longest", pad_to_multiple_of=8)
    widths, tokens = [], 0
    for batch in data.train_dataloader():
        widths.append(batch["input_ids"].shape[1])
        assert batch["attention_mask"][:, -8:].any()  # the last 8 columns hold a real token: no more than needed
        tokens += int(batch["attention_mask"].sum())
    assert all(w % 8 == 0 and w <= 256 for w in widths) and max(widths) < 256
    assert tokens == int(data.train_set.tensors["attention_mask"].sum())  # no real token is cut


def test_cut_conversations_are_counted_per_side_by_where_the_cut_fell(tmp_path):
    teacher = chat_tokenizer(tmp_path / "teacher", "header")
    turns = [("user", "what is a list?"), ("assistant", "a list holds items in order. " * 4)]
    source = conversations_file(tmp_path / "cut.jsonl", [turns] * 6 + [turns + [("user", "why? " * 30)]] * 2)
    common = {"source": str(source), "chat_template": "chatml", "teacher_tokenizer": teacher, "val_fraction": 0.25}
    with pytest.warns(UserWarning, match=r"data \(train\): of 6 conversations, "):
        data = create_datamodule("text", seq_len=300, teacher_seq_len=60, **common)
        data.setup()
    train = data.statistics["train"]
    assert train["documents"] == 6 and train["rows"] == 6 and train["dropped"] == 0
    both = data.statistics["train"]["truncated"], data.statistics["val"]["truncated"]
    # the student's rows lose only the long trailing question; the teacher's short rows cut every answer
    assert sum(s["student"]["prompt_side"] for s in both) == 2 and sum(s["student"]["response_side"] for s in both) == 0
    assert sum(s["teacher"]["response_side"] for s in both) == 8 and sum(s["teacher"]["prompt_side"] for s in both) == 0


def test_a_content_given_as_text_parts_is_joined_and_other_parts_are_refused():
    parts = [{"type": "text", "text": "a list "}, {"type": "text", "text": "holds items."}]
    chat = parse_conversation([{"role": "user", "content": "what?"}, {"role": "assistant", "content": parts}], "here")
    assert chat.messages[1].content == "a list holds items."
    image = [{"type": "image", "image": "cat.png"}]
    with pytest.raises(DistillError, match=r"^f.jsonl:3: message 1: content part 0 is 'image', not text"):
        parse_conversation([{"role": "user", "content": "?"}, {"role": "assistant", "content": image}], "f.jsonl:3")
