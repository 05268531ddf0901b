"""The Hub chat recipes on a user's own chat JSONL, overridden from the command line as the README says: the source
replaced by one `data.source=` (its Hub splits go with it), the `messages` key found under another name through
`data.columns`, validated on a held-out fraction or a file of its own; the models swapped for tiny ones by override
so that the runs are offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.cli import main
from distill.models import create_model

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
TURNS = [
    ("system", "You answer in one short sentence."),
    ("user", "What does sorted do?"),
    ("assistant", "It returns a new sorted list."),
    ("user", "And list.sort?"),
    ("assistant", [{"type": "text", "text": "It sorts "}, {"type": "text", "text": "the list in place."}]),
]


def chats_file(path: Path, count: int, key: str = "conversation") -> Path:
    """`count` chats under `key` (not `messages`), each a little different; the last answer as text parts."""
    lines = []
    for i in range(count):
        turns = [{"role": role, "content": content} for role, content in TURNS]
        turns[1]["content"] = f"Question {i}: what does sorted do?"
        lines.append(json.dumps({"id": i, key: turns}))
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_models(folder: Path) -> list[str]:
    """Overrides that swap the recipe's Qwen models for tiny Llamas (the teacher's weights in a file) and its GPU
    trainer for a two-step CPU run."""
    torch.manual_seed(0)
    teacher = create_model("llama", vocab_size=259, **{**SMALL, "hidden_size": 48})
    torch.save({"model": teacher.state_dict()}, folder / "teacher.pt")
    sizes = ", ".join(f"{k}: {v}" for k, v in SMALL.items())
    return [
        "data.tokenizer=bytes",
        "data.chat_template=chatml",
        "data.seq_len=384",
        "data.num_workers=0",
        f"student={{name: llama, {sizes}}}",
        f"teacher.model={{name: llama, {sizes.replace('32', '48', 1)}}}",
        f"teacher.checkpoint={folder / 'teacher.pt'}",
        "teacher.dtype=null",
        "logger.wandb=null",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        "trainer.val_check_interval=1.0",
        "trainer.accumulate_grad_batches=1",
        "trainer.enable_progress_bar=false",
        "causal_lm.sampling.max_new_tokens=6",
    ]


@pytest.mark.parametrize("recipe", ["chat_kd_qwen2.5_1.5b_to_0.5b", "gkd_qwen2.5_1.5b_to_0.5b"])
def test_the_hub_chat_recipe_trains_on_a_users_chat_jsonl(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chats = chats_file(tmp_path / "chats.jsonl", 20)
    overrides = tiny_models(tmp_path)
    if recipe.startswith("chat_kd"):  # the GKD recipe has no causal_lm.sampling key to drop: keep it for both
        overrides = [o for o in overrides if not o.startswith("causal_lm")] + ["causal_lm.mode=off_policy"]
    args = ["fit", "--recipe", recipe, f"data.source={chats}", "data.columns={messages: conversation}", *overrides]
    assert main(args) == 0, capsys.readouterr().err
    (run,) = (tmp_path / "runs" / recipe).glob("version_0")
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/loss"] > 0 and results["test"]["test/kl"] >= 0  # it validated and tested
    report = json.loads((run / "data.json").read_text())
    assert report["train"]["documents"] == 18 and report["val"]["documents"] == 2  # the default held-out 10%
    assert set(report["train"]["truncated"]) == {"student"}  # one tokenizer: one side


def test_validation_on_a_file_of_its_own_or_a_fraction(tmp_path, monkeypatch):
    from distill.config.load import load_recipe
    from distill.data import create_datamodule
    from distill.data.sources import plan_sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train, val = chats_file(tmp_path / "train.jsonl", 12), chats_file(tmp_path / "val.jsonl", 3)
    common = {"columns": {"messages": "conversation"}, "chat_template": "chatml", "seq_len": 384}
    on_file = create_datamodule("text", source=str(train), validation=str(val), **common)
    assert [len(split) for split in on_file.documents] == [12, 3]  # every training chat trains; the file validates
    on_fraction = create_datamodule("text", source=str(train), val_fraction=0.25, **common)
    assert [len(split) for split in on_fraction.documents] == [9, 3]
    mapped = create_datamodule("text", source={"path": str(train)}, validation={"path": str(val)}, **common)
    assert mapped.documents == on_file.documents
    # a recipe's source mapping gives up its validation split for a file: data.source.val_split=null
    loaded = load_recipe("chat_kd_qwen2.5_1.5b_to_0.5b", ["data.source.val_split=null", f"data.validation={val}"])
    plan = plan_sources(
        **{k: loaded.recipe.data[k] for k in ("source", "validation", "split", "val_split")},
        revision=None,
        columns=None,
        forms="",
        special=(),
    )
    assert plan.train.split == "train_sft" and plan.validation is not None and plan.validation.path == str(val)
