"""Every notebook runs top to bottom (a failing cell fails the test), is stored without outputs, and saves its plots
as PNG files in its output folder."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_saves_its_plots(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_NOTEBOOK_OUT", str(tmp_path / "out"))
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
