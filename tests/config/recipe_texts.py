"""Recipe snippets and helpers shared by the recipe tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config.load import load_recipe
from distill.errors import RecipeError

BASE = "data: {name: digits}\nstudent: {name: convnet}\n"
TEACHER = "teacher: {model: {name: convnet}, checkpoint: teacher.pt}\n"
KD = BASE + TEACHER + "loss:\n  ce_weight: 0.1\n  terms:\n    kd: {weight: 0.9, temperature: 4.0}\n"


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, overrides: list[str] = ()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), list(overrides))
    return str(info.value)
