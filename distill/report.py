"""The summary printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = (("teacher accuracy", "test/teacher_acc"), ("student accuracy", "test/acc"), ("agreement", "test/agreement"))


def print_summary(title: str, metrics: dict[str, float], run_dir: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("test split", justify="right")
    for label, key in ROWS:
        if key in metrics:
            table.add_row(label, f"{100 * metrics[key]:.2f}%")
    console = Console()
    console.print(table)
    console.print(f"run folder: {run_dir}", soft_wrap=True)
