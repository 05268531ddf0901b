"""Errors the user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """A problem with the user's input (recipe, command line, data, checkpoint): no traceback is shown."""


class RecipeError(DistillError):
    """A recipe key is unknown, mistyped or has a value of the wrong type."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean X?)' when a close candidate exists, else the list of valid names."""
    candidates = sorted(candidates)
    match = closest(name, candidates)
    if match is not None:
        return f" (did you mean '{match}'?)"
    return f" (valid: {', '.join(candidates)})" if candidates else ""
