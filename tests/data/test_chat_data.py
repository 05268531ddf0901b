"""Conversations through chat templates: labels on the assistant's turns only (their end-of-turn markup included),
found from offsets in the rendered text whatever the template's style; each side renders its own template when
teacher and student tokenizers differ; bad conversations and missing templates are one-line errors."""

from __future__ import annotations

import pytest

from distill.data import create_datamodule
from distill.data.chat import ChatRenderer, encode_conversation
from distill.data.conversation import parse_conversation
from distill.data.tokenizers import ByteTokenizer, make_tokenizer
from distill.errors import DistillError
from tests.helpers_chat import chat_tokenizer, conversations_file

CHAT = [
    ("system", "you answer briefly."),
    ("user", "what is a list?"),
    ("assistant", "a list holds items in order."),
    ("user", "how do i sort?"),
    ("assistant", "call sorted on it."),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def conversation(turns=CHAT):
    return parse_conversation([{"role": r, "content": c} for r, c in turns], "test")


def trained_text(row, tokenizer) -> list[str]:
    """The labelled stretches of a row, each decoded with special tokens kept."""
    stretches, current = [], []
    for token, label in zip(row.ids, row.labels, strict=True):
        if label != -100:
            current.append(token)
        elif current:
            stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    decode = getattr(tokenizer, "tokenizer", None)
    if decode is not None:
        return [decode.decode(s, skip_special_tokens=False) for s in stretches]
    return [bytes(s).decode() for s in stretches]


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("chatml", ["a list holds items in order.<|im_end|>\n", "call sorted on it.<|im_end|>\n"]),
        ("header", ["a list holds items in order.<|eot_id|>", "call sorted on it.<|eot_id|>"]),
    ],
)
def test_only_assistant_turns_are_trained_with_their_end_of_turn(tmp_path, style, expected):
    tokenizer = make_tokenizer(chat_tokenizer(tmp_path / style, style))
    row = encode_conversation(conversation(), tokenizer, ChatRenderer(tokenizer, None, "test"), None)
    assert trained_text(row, tokenizer) == expected


def test_a_tokenizer_without_a_template_renders_the_recipes_template():
    tokenizer = ByteTokenizer()
    row = encode_conversation(conversation(), tokenizer, ChatRenderer(tokenizer, "chatml", "bytes"), None)
    expected = ["a list holds items in order.<|im_end|>\n", "call sorted on it.<|im_end|>\n"]
    assert trained_text(row, tokenizer) == expected
    assert bytes(row.ids).decode().startswith("<|im_start|>system\nyou answer briefly.<|im_end|>\n")
    short = encode_conversation(conversation(), tokenizer, ChatRenderer(tokenizer, "chatml", "bytes"), 40)
    assert short.truncated and len(short.ids) == 40


def test_a_template_that_rewrites_earlier_turns_trains_each_turns_content(tmp_path):
    tokenizer = make_tokenizer(chat_tokenizer(tmp_path / "forgetful", "forgetful"))
    row = encode_conversation(conversation(), tokenizer, ChatRenderer(tokenizer, None, "test"), None)
    trained = trained_text(row, tokenizer)
    # the first answer is no longer in the rendered text; the last one is, with its end of turn
    assert trained == ["call sorted on it.<|im_end|>\n"]


def test_teacher_and_student_each_render_their_own_template(tmp_path):
    source = conversations_file(tmp_path / "chats.jsonl", [CHAT] * 6 + [CHAT[:3]] * 4)
    student, teacher = chat_tokenizer(tmp_path / "s", "chatml"), chat_tokenizer(tmp_path / "t", "header")
    data = create_datamodule(
        "text", source=str(source), tokenizer=student, teacher_tokenizer=teacher, seq_len=96, batch_size=2
    )
    data.setup()
    rows = data.train_set.tensors
    student_text = data.tokenizer.tokenizer.decode(rows["input_ids"][0].tolist(), skip_special_tokens=False)
    teacher_text = data.teacher_tokenizer.tokenizer.decode(
        rows["teacher_input_ids"][0].tolist(), skip_special_tokens=False
    )
    assert "<|im_start|>assistant\n" in student_text and "<|start_header_id|>" not in student_text
    assert "<|start_header_id|>assistant<|end_header_id|>" in teacher_text and "<|im_start|>" not in teacher_text
    for prefix in ("", "teacher_"):
        trained = rows[f"{prefix}labels"][0]
        ids = rows[f"{prefix}input_ids"][0]
        tokenizer = data.tokenizer if not prefix else data.teacher_tokenizer
        text = tokenizer.tokenizer.decode(ids[trained != -100].tolist(), skip_special_tokens=True)
        assert "a list holds items in order." in text and "what is a list" not in text


def test_bad_conversations_and_missing_templates_are_one_line_errors(tmp_path):
    no_answer = conversations_file(tmp_path / "no_answer.jsonl", [CHAT[:2]])
    with pytest.raises(DistillError, match=r"no_answer.jsonl:1: the conversation has no assistant turn to train on"):
        create_datamodule("text", source=str(no_answer), chat_template="chatml").documents  # noqa: B018
    bad_role = conversations_file(tmp_path / "bad_role.jsonl", [[("robot", "hi"), ("assistant", "yes")]])
    with pytest.raises(DistillError, match=r"message 0 has role 'robot'"):
        create_datamodule("text", source=str(bad_role), chat_template="chatml").documents  # noqa: B018
    chats = conversations_file(tmp_path / "chats.jsonl", [CHAT] * 4)
    with pytest.raises(DistillError, match=r"conversations need a chat template and the student tokenizer 'bytes'"):
        create_datamodule("text", source=str(chats), seq_len=64).setup()
    with pytest.raises(DistillError, match="data.chat_template is not a valid Jinja template"):
        create_datamodule("text", source=str(chats), seq_len=64, chat_template="{% for %}").setup()


def test_a_datasets_messages_column_gives_conversations(tmp_path):
    from datasets import Dataset

    messages = [[{"role": r, "content": c} for r, c in CHAT]] * 5
    Dataset.from_dict({"dialogue": messages}).to_parquet(str(tmp_path / "chats.parquet"))
    data = create_datamodule(
        "text",
        source=str(tmp_path / "chats.parquet"),
        columns={"messages": "dialogue"},
        chat_template="chatml",
        seq_len=256,
        val_fraction=0.2,
    )
    data.setup()
    assert len(data.train_set) == 4 and len(data.val_set) == 1
    labels = data.train_set.tensors["labels"][0]
    trained = bytes(t for t in labels.tolist() if t != -100).decode()
    assert trained == "a list holds items in order.<|im_end|>\ncall sorted on it.<|im_end|>\n"


def test_preference_chats_train_each_final_answer_after_the_shared_prompt(tmp_path):
    import json

    from datasets import Dataset

    prompt = [{"role": "user", "content": "what is a list?"}]
    rows = {
        "chosen": [prompt + [{"role": "assistant", "content": f"a list holds items in order {i}."}] for i in range(6)],
        "rejected": [prompt + [{"role": "assistant", "content": f"no idea {i}"}] for i in range(6)],
    }
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "prefs.parquet"))  # UltraFeedback's layout: whole chats
    data = create_datamodule(
        "preference", source=str(tmp_path / "prefs.parquet"), chat_template="chatml", seq_len=160, val_fraction=0.34
    )
    data.setup()
    tensors = data.train_set.tensors
    chosen = bytes(t for t in tensors["chosen_labels"][0].tolist() if t != -100).decode()
    rejected = bytes(t for t in tensors["rejected_labels"][0].tolist() if t != -100).decode()
    assert chosen.startswith("a list holds items in order") and chosen.endswith(".<|im_end|>\n")
    assert rejected.startswith("no idea") and rejected.endswith("<|im_end|>\n")
    prompt_ids = tensors["prompt_input_ids"][0][tensors["prompt_attention_mask"][0]].tolist()
    assert bytes(prompt_ids).decode() == "<|im_start|>user\nwhat is a list?<|im_end|>\n<|im_start|>assistant\n"

    different = tmp_path / "different.jsonl"
    other = [{"role": "user", "content": "something else"}, {"role": "assistant", "content": "x"}]
    different.write_text(json.dumps({"prompt": "", "chosen": rows["chosen"][0], "rejected": other}) + "\n")
    with pytest.raises(DistillError, match="chosen and rejected must follow the same turns"):
        create_datamodule("preference", source=str(different), chat_template="chatml").records  # noqa: B018


def test_dpo_trains_on_chat_pairs_end_to_end(tmp_path, monkeypatch):
    import json

    from distill.cli import main
    from tests.cli.test_dpo_recipe import TINY

    monkeypatch.chdir(tmp_path)
    lines = []
    for i in range(24):
        prompt = [{"role": "user", "content": f"question {i}: what is a list?"}]
        chosen = prompt + [{"role": "assistant", "content": "a list holds items in order."}]
        rejected = prompt + [{"role": "assistant", "content": "order in items holds list a."}]
        lines.append(json.dumps({"chosen": chosen, "rejected": rejected}))
    (tmp_path / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    chat = ["data.source=prefs.jsonl", "data.chat_template=chatml", "data.max_pairs=null"]
    assert main(["fit", "--recipe", "dpo_tiny", *TINY, *chat]) == 0
    results = json.loads(next((tmp_path / "runs").rglob("dpo_tiny/version_0/results.json")).read_text())["test"]
    assert 0 <= results["test/pref_acc"] <= 1
