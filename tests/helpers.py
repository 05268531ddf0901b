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
