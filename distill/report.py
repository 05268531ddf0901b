"""The summary printed at the end of a run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = (("teacher accuracy", "test/teacher_acc"), ("student accuracy", "test/acc"), ("agreement", "test/agreement"))


def print_summary(title: str, metrics: dict[str, float], caption: str = "") -> None:
    table = Table(title=title, caption=caption)
    table.add_column("metric")
    table.add_column("test split", justify="right")
    for label, key in ROWS:
        if key in metrics:
            table.add_row(label, f"{100 * metrics[key]:.2f}%")
    Console().print(table)
