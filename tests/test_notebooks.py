"""Every notebook runs top to bottom (a failing cell fails the test; the three longest under `-m slow`), is stored
without outputs, and saves its plots as PNG files in its output folder. The runs here train at a fifth of the
notebooks' budgets (`budget`): what is tested is that every cell runs, not the numbers a full run shows."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from distill.analysis.notebook import budget

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SCALE = 0.2
# the longest runs (40-100 s each here) keep the default suite under ten minutes; `pytest -m slow` runs them
LONG = {"03_language_models", "04_speculative_decoding", "05_amu_shots"}
RUNS = [pytest.param(p, marks=pytest.mark.slow) if p.stem in LONG else p for p in NOTEBOOKS]


def test_budgets_scale_and_stay_at_least_one(monkeypatch):
    assert budget(150) == 150  # a user's run: the notebook's own budget
    monkeypatch.setenv("DISTILL_NOTEBOOK_SCALE", "0.2")
    assert (budget(150), budget(3), budget(1)) == (30, 1, 1)
    monkeypatch.setenv("DISTILL_NOTEBOOK_SCALE", "2")
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        budget(10)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", RUNS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_saves_its_plots(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("DISTILL_NOTEBOOK_SCALE", str(SCALE))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    saved = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    plot_calls = sum(
        len(re.findall(r"\bplots\.\w+\(", cell.source)) for cell in notebook.cells if cell.cell_type == "code"
    )
    assert len(saved) == plot_calls, f"{path.name}: {saved}"
    shown = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) == plot_calls  # each figure is shown in the notebook too
