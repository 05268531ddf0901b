"""The summary printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = (
    ("teacher accuracy", "test/teacher_acc", "percent"),
    ("student accuracy", "test/acc", "percent"),
    ("agreement", "test/agreement", "percent"),
    ("teacher loss", "test/teacher_loss", "number"),
    ("teacher perplexity", "test/teacher_ppl", "number"),
    ("student loss", "test/loss", "number"),
    ("student perplexity", "test/ppl", "number"),
    ("KL(teacher || student) per token", "test/kl", "number"),
    ("preference accuracy, policy", "test/pref_acc", "percent"),
    ("preference accuracy, reference", "test/ref_pref_acc", "percent"),
    ("implicit reward accuracy", "test/reward_acc", "percent"),
    ("mean implicit reward margin", "test/margin", "number"),
    ("preference accuracy, student", "test/student_pref_acc", "percent"),
    ("preference accuracy, DPO model", "test/dpo_pref_acc", "percent"),
    ("preference accuracy, second model", "test/second_pref_acc", "percent"),
    ("log-prob margin chosen - rejected, student", "test/student_margin", "number"),
    ("log-prob margin chosen - rejected, DPO model", "test/dpo_margin", "number"),
    ("preference accuracy, reference", "test/reference_pref_acc", "percent"),
    ("log-prob margin chosen - rejected, reference", "test/reference_margin", "number"),
    ("implicit reward accuracy, student", "test/student_reward_acc", "percent"),
    ("mean implicit reward margin, student", "test/student_reward_margin", "number"),
    ("implicit reward accuracy, DPO model", "test/dpo_reward_acc", "percent"),
    ("mean implicit reward margin, DPO model", "test/dpo_reward_margin", "number"),
    ("speculative decoding: accepted length (tokens/round)", "test/accepted_length", "number"),
    ("speculative decoding: speedup over greedy", "test/speedup", "number"),
    ("speculative decoding: lossless prompts", "test/lossless", "percent"),
)


def print_summary(title: str, metrics: dict[str, float], run_dir: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("test split", justify="right")
    classification = "test/acc" in metrics
    for label, key, kind in ROWS:
        if key not in metrics or (key == "test/loss" and classification):
            continue
        value = f"{100 * metrics[key]:.2f}%" if kind == "percent" else f"{metrics[key]:.4f}"
        if key == "test/agreement" and not classification:
            label = "next-token agreement"
        if key == "test/loss" and "test/reward_acc" in metrics:
            label = "DPO loss"
        table.add_row(label, value)
    console = Console()
    console.print(table)
    console.print(f"run folder: {run_dir}", soft_wrap=True)
