"""Tables printed at the end of a run, an evaluation or a comparison; each task says which rows it has."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distill.tasks.spec import SummaryRow

SPLITS = {"test": "test split", "val": "validation split"}


def console() -> Console:
    return Console(width=None if Console().is_terminal else 160)  # a log file gets each row on one line


def print_summary(
    title: str, metrics: Mapping[str, float], rows: Sequence[SummaryRow], folder: str | Path, split: str = "test"
) -> None:
    """The task's `rows` that were measured, for the `split` ("test" or "val"), then where the run lives."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column(SPLITS[split], justify="right")
    for row in rows:
        value = metrics.get(f"{split}/{row.metric}")
        if value is not None:
            table.add_row(row.label, row.cell(value))
    out = console()
    out.print(table)
    out.print(f"run folder: {folder}", soft_wrap=True)


def mean_spread(values: list[float], percent: bool) -> str:
    scale, digits = (100, 2) if percent else (1, 4)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * spread:.{digits}f}"


def print_comparison(
    title: str, results: Mapping[str, list[dict[str, float]]], rows: Sequence[SummaryRow], folder: Path
) -> None:
    """One line per variant, one column per summary row that some run measured: mean ± sd over its seeds."""
    runs = [r for variant in results.values() for r in variant]
    columns = [row for row in rows if any(f"test/{row.metric}" in r for r in runs)]
    table = Table(title=title)
    table.add_column("variant")
    for row in columns:
        table.add_column(f"{row.label}{' %' if row.percent else ''} (mean ± sd)", justify="right")
    table.add_column("seeds", justify="right")
    for name, variant in results.items():
        cells = []
        for row in columns:
            values = [r[f"test/{row.metric}"] for r in variant if f"test/{row.metric}" in r]
            cells.append(mean_spread(values, row.percent) if values else "-")
        table.add_row(name, *cells, str(len(variant)))
    out = console()
    out.print(table)
    out.print(f"runs and summary.json: {folder}", soft_wrap=True)
