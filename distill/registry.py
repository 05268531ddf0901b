"""Name -> constructor registries for models, datasets and losses.

A recipe can only name what is registered here, a model of the model libraries the project
supports (`timm:<name>`, `torchvision:<name>`), or `module:attribute` from a module the user
allowed explicitly on the command line (`--allow-module`). Nothing else is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from distill.errors import DistillError, did_you_mean

T = TypeVar("T", bound=Callable[..., Any])

# Modules the user allowed for this process (`--allow-module`); recipes cannot add to it.
_ALLOWED_MODULES: set[str] = set()


def allow_modules(names: list[str]) -> None:
    """Let recipes reference `module:attribute` from these modules (and their submodules)."""
    _ALLOWED_MODULES.update(names)


# Whether the user allowed Hugging Face models to run their repository's own code (`--allow-remote-code`).
_REMOTE_CODE = {"allowed": False}


def allow_remote_code(allowed: bool) -> None:
    _REMOTE_CODE["allowed"] = allowed


def remote_code_allowed() -> bool:
    return _REMOTE_CODE["allowed"]


def is_allowed(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _ALLOWED_MODULES)


def import_allowed(reference: str, what: str) -> Any:
    """Import `module:attribute` if the user allowed the module, else raise a DistillError."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise DistillError(f"{what} '{reference}' is not registered and is not of the form 'module:attribute'")
    if not is_allowed(module_name):
        raise DistillError(
            f"{what} '{reference}' comes from module '{module_name}', which recipes may not import; "
            f"pass --allow-module {module_name.split('.')[0]} to allow it"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DistillError(f"{what} '{reference}': cannot import module '{module_name}': {exc}") from None
    if not hasattr(module, attribute):
        raise DistillError(f"{what} '{reference}': module '{module_name}' has no attribute '{attribute}'")
    return getattr(module, attribute)


class Registry(Generic[T]):
    """A named collection of constructors, filled with the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def remove(self, name: str) -> T:
        """Take `name` out again (tests that register an entry of their own); returns the entry."""
        return self._entries.pop(name)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def get(self, name: str) -> T:
        """The registered entry, or an allowed `module:attribute`; otherwise a DistillError naming the closest."""
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return import_allowed(name, self.kind)
        raise DistillError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}")
