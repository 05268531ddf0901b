"""Shared fixtures: a tiny digits recipe that trains in seconds, and a teacher store trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import tiny_recipe, write_recipe


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the internet: downloads are switched off unless a test serves them itself (on 127.0.0.1,
    `tests/helpers_download.py`)."""
    monkeypatch.setenv("DISTILL_OFFLINE", "1")


@pytest.fixture(scope="session")
def teacher_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher store shared by the session: the tiny teacher is trained by the first test that needs it."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def recipe_file(tmp_path: Path, teacher_store: Path) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs", teacher_store))
