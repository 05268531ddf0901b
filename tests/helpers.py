"""Helpers shared by the tests: a tiny digits recipe that trains in seconds."""

from __future__ import annotations

from pathlib import Path

import yaml

FAST_TRAINER = {
    "max_epochs": 2,
    "accelerator": "cpu",
    "devices": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 5,
}


def tiny_recipe(runs: Path, teachers: Path, **changes) -> dict:
    """A complete digits recipe with tiny models and budgets; `changes` replace top-level sections."""
    recipe = {
        "description": "tiny test recipe",
        "seed": 0,
        "run": {"root": str(runs), "name": "tiny"},
        "data": {"name": "digits", "batch_size": 32},
        "student": {"name": "convnet", "widths": [8, 8], "hidden": 0},
        "teacher": {
            "model": {"name": "convnet", "widths": [8, 16], "hidden": 16},
            "store": str(teachers),
            "train": {
                "optimizer": {"name": "adamw", "lr": 0.01},
                "scheduler": {"name": "constant"},
                "trainer": {**FAST_TRAINER, "max_epochs": 3},
            },
        },
        "loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}},
        "optimizer": {"name": "adamw", "lr": 0.03},
        "scheduler": {"name": "cosine"},
        "trainer": dict(FAST_TRAINER),
    }
    recipe.update(changes)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def table_rows(printed: str) -> dict[str, str]:
    """The `label -> value` rows of the rich tables in `printed`."""
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def check_evaluation(run: Path, capsys, unrepeatable: tuple[str, ...] = ("speedup",)) -> dict[str, str]:
    """`distill validate` and `distill test` on the run's best checkpoint both end with the task's table, and the
    test table shows the numbers the run itself reported (all but wall-clock measurements): evaluation builds what
    training built, with the frozen weights the student learned from. Returns the test table's rows."""
    import json

    from distill.cli import main
    from distill.tasks import task_spec

    results = json.loads((run / "results.json").read_text())
    spec = task_spec(yaml.safe_load((run / "recipe.yaml").read_text())["task"])
    capsys.readouterr()
    assert main(["validate", "--checkpoint", results["best_checkpoint"]]) == 0
    printed = capsys.readouterr().out
    assert "validation split" in printed and set(table_rows(printed)) & {row.label for row in spec.summary}
    assert main(["test", "--checkpoint", results["best_checkpoint"]]) == 0
    rows = table_rows(capsys.readouterr().out)
    compared = 0
    for row in spec.summary:
        value = results["test"].get(f"test/{row.metric}")
        if value is not None and row.metric not in unrepeatable:
            assert rows[row.label] == row.cell(value), (row.label, rows[row.label], value)
            compared += 1
    assert compared >= 2, rows
    return rows
