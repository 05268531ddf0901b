"""Every `losses` and `distill` name the docs and the docstrings give a reader resolves: each `from X import Y` they
write imports, and each dotted name they quote (`losses.chunked.TeacherHead`) exists and, where its module lists its
public names in `__all__`, is one of them."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"\bfrom ((?:losses|distill)(?:\.\w+)*) import (\w+(?:, *\w+)*)")
DOTTED = re.compile(r"`((?:losses|distill)(?:\.\w+)+)`")


def documents() -> list[tuple[str, str]]:
    """`(where, text)` of the Markdown docs and of every docstring in the two packages."""
    found = [(str(p.relative_to(ROOT)), p.read_text()) for p in [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]]
    for path in sorted([*ROOT.glob("losses/**/*.py"), *ROOT.glob("distill/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    found.append((f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}", docstring))
    return found


def references() -> list[tuple[str, str]]:
    """`(where, dotted name)` of every name the documents import or quote."""
    found = []
    for where, text in documents():
        for match in IMPORT.finditer(text):
            found += [(where, f"{match.group(1)}.{name.strip()}") for name in match.group(2).split(",")]
        found += [(where, match.group(1)) for match in DOTTED.finditer(text)]
    return found


def problem(dotted: str) -> str | None:
    """Why `dotted` does not resolve to a public name, or None: the longest importable module prefix, then
    attributes; a name read from a module with `__all__` must be listed there (or be a submodule or private)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        value: object = module
        for depth, name in enumerate(parts[split:], start=split):
            if not hasattr(value, name):
                return f"{'.'.join(parts[:depth])} has no {name}"
            owner, value = value, getattr(value, name)
            public = isinstance(owner, ModuleType) and not isinstance(value, ModuleType) and not name.startswith("_")
            if public and hasattr(owner, "__all__") and name not in owner.__all__:
                return f"{name} is not exported by {owner.__name__} (its __all__)"
        return None
    return f"no module {parts[0]}"


def test_the_scan_finds_the_references_it_checks() -> None:
    found = {name for _, name in references()}
    assert {"losses.KDLoss", "losses.chunked.TeacherHead", "losses.stored_teacher.StoredTopK"} <= found
    assert problem("losses.chunked.NoSuchThing") == "losses.chunked has no NoSuchThing"
    assert problem("losses.chunked.check_head") == "check_head is not exported by losses.chunked (its __all__)"


@pytest.mark.parametrize(("where", "dotted"), sorted(set(references())))
def test_every_documented_name_imports(where: str, dotted: str) -> None:
    assert problem(dotted) is None, f"{where}: {dotted}: {problem(dotted)}"
