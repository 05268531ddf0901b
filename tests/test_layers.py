"""The layers of the code, as docs/design.md draws them, enforced on every import (including those inside functions
and under TYPE_CHECKING): cli -> engine -> (teachers, tasks) -> (models, data, losses); `losses` imports only torch
and the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the distill layers it must never import
FORBIDDEN = {
    "cli": set(),
    "analysis": {"cli", "export"},
    "export": {"cli", "analysis"},
    "engine": {"cli", "analysis", "export"},
    "teachers": {"cli", "analysis", "export", "engine", "tasks"},
    "tasks": {"cli", "analysis", "export", "engine", "teachers"},
    "generate": {"cli", "analysis", "export", "engine", "teachers", "tasks"},
    "config": {"cli", "analysis", "export", "engine", "teachers"},
    "models": {"cli", "analysis", "export", "engine", "teachers", "tasks", "generate", "config"},
    "data": {"cli", "analysis", "export", "engine", "teachers", "tasks", "generate", "config", "models"},
    "base": {"cli", "analysis", "export", "engine", "teachers", "tasks", "generate", "config", "models", "data"},
}


def layer(path: Path) -> str:
    """`distill/<layer>/...` -> layer; `python -m distill` is the command line; the other modules at the top of
    distill (errors, registry) are the base."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "losses":
        return "losses"
    if parts[1] == "__main__.py":
        return "cli"
    return parts[1] if len(parts) > 2 else "base"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def sources() -> list[Path]:
    return sorted([*ROOT.glob("distill/**/*.py"), *ROOT.glob("losses/**/*.py")])


def violations(path: Path) -> list[str]:
    own = layer(path)
    found = []
    for line, module in imported_modules(path):
        top, *rest = module.split(".")
        where = f"{path.relative_to(ROOT)}:{line} imports {module}"
        if own == "losses":
            if top not in ("torch", "losses", "__future__") and top not in sys.stdlib_module_names:
                found.append(f"{where}: losses import only torch and the standard library")
        elif top == "distill" and rest:
            target = rest[0] if rest[0] not in ("errors", "registry") else "base"
            if target in FORBIDDEN[own]:
                found.append(f"{where}: {own} never imports {target}")
    return found


def test_every_module_is_in_a_known_layer():
    layers = {layer(path) for path in sources()}
    assert layers <= {*FORBIDDEN, "losses"}, layers - {*FORBIDDEN, "losses"}
    top = sorted(p.name for p in ROOT.glob("distill/*.py"))
    assert top == ["__init__.py", "__main__.py", "errors.py", "registry.py"], top  # the rest lives in its layer


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    assert violations(path) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A task module importing the engine, and a loss importing numpy, are both found."""
    fake = ROOT / "distill" / "tasks" / "_upward_probe.py"
    loss = ROOT / "losses" / "_numpy_probe.py"
    try:
        fake.write_text("def f():\n    from distill.engine.pipeline import fit\n")
        loss.write_text("import numpy\n")
        assert violations(fake) == [
            "distill/tasks/_upward_probe.py:2 imports distill.engine.pipeline: tasks never imports engine"
        ]
        assert "losses import only torch" in violations(loss)[0]
    finally:
        fake.unlink(missing_ok=True)
        loss.unlink(missing_ok=True)
