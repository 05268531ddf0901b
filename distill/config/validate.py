"""Check a plain recipe dict against the typed settings and build them.

Every key is checked; errors name the key path, where it came from and the closest valid key.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from distill.errors import RecipeError, did_you_mean

NoneType = type(None)
MISSING = "???"


def type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "a mapping"
    if annotation is NoneType:
        return "null"
    if dataclasses.is_dataclass(annotation) or (isinstance(annotation, type) and issubclass(annotation, dict)):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


class Checker:
    """Converts values to their annotated types. `source` names where the values came from in errors.

    `component` is called for dict subclasses that stand for a registry component (model, dataset, loss term).
    """

    def __init__(
        self,
        source: str,
        component: Callable[[Checker, type, dict, str], dict] | None = None,
        allow_missing: bool = False,
    ) -> None:
        self.source = source
        self.component = component
        self.allow_missing = allow_missing  # accept OmegaConf's `???` (a value to be given on the command line)

    def fail(self, path: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: '{path}' {message}")

    def value(self, annotation: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(annotation)
        waiting = self.allow_missing and isinstance(value, str) and (value == MISSING or value.startswith("${"))
        if annotation is Any or waiting:
            return value
        if origin in (Union, types.UnionType):
            options = typing.get_args(annotation)
            if value is None and NoneType in options:
                return None
            errors = []
            for option in (o for o in options if o is not NoneType):
                try:
                    return self.value(option, value, path)
                except RecipeError as exc:
                    errors.append(exc)
            if len(errors) == 1:
                raise errors[0]
            raise self.wrong_type(annotation, value, path)
        if origin is Literal:
            choices = typing.get_args(annotation)
            if value not in choices:
                hint = did_you_mean(str(value), [str(c) for c in choices])
                raise self.fail(path, f"must be {type_name(annotation)}, got {value!r}{hint}")
            return value
        if origin is list:
            if not isinstance(value, list):
                raise self.wrong_type(annotation, value, path)
            (item,) = typing.get_args(annotation)
            return [self.value(item, v, f"{path}.{i}") for i, v in enumerate(value)]
        if dataclasses.is_dataclass(annotation):
            return self.dataclass(annotation, value, path)
        if isinstance(annotation, type) and issubclass(annotation, dict) and annotation is not dict:
            if not isinstance(value, dict):
                raise self.wrong_type(annotation, value, path)
            return annotation(self.component(self, annotation, value, path)) if self.component else annotation(value)
        if origin is dict or annotation is dict:
            if not isinstance(value, dict):
                raise self.wrong_type(annotation, value, path)
            args = typing.get_args(annotation)
            item = args[1] if args else Any
            return {k: self.value(item, v, f"{path}.{k}") for k, v in value.items()}
        return self.scalar(annotation, value, path)

    def scalar(self, annotation: Any, value: Any, path: str) -> Any:
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if annotation in (int, float) and isinstance(value, bool):
            raise self.wrong_type(annotation, value, path)
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        if annotation is NoneType and value is None:
            return None
        raise self.wrong_type(annotation, value, path)

    def wrong_type(self, annotation: Any, value: Any, path: str) -> RecipeError:
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        return self.fail(path, f"must be {type_name(annotation)}, got {shown} ({type(value).__name__})")

    def unknown_key(self, path: str, key: str, valid: list[str]) -> RecipeError:
        where = f"{path}.{key}" if path else key
        return RecipeError(f"{self.source}: unknown key '{where}'{did_you_mean(key, valid)}")

    def dataclass(self, cls: type, value: Any, path: str, require: tuple[str, ...] = ()) -> Any:
        if not isinstance(value, dict):
            raise self.wrong_type(cls, value, path or "recipe")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in value:
            if key not in fields:
                raise self.unknown_key(path, str(key), list(fields))
        for key in require:
            if value.get(key) is None:
                raise self.fail(f"{path}.{key}" if path else key, "is required")
        kwargs = {key: self.value(hints[key], v, f"{path}.{key}" if path else key) for key, v in value.items()}
        return cls(**kwargs)

    def arguments(self, target: Callable, given: dict, path: str, skip: tuple[str, ...] = ()) -> dict:
        """Check `given` keyword arguments against `target`'s signature; return them with the defaults filled in."""
        params = {
            name: p
            for name, p in inspect.signature(target).parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        try:
            hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        except Exception:  # unresolvable annotations: accept the values as given
            hints = {}
        for key in given:
            if key not in params:
                raise self.unknown_key(path, key, list(params))
        resolved = {}
        for name, param in params.items():
            if name in given:
                resolved[name] = self.value(hints.get(name, Any), given[name], f"{path}.{name}")
            elif param.default is not param.empty:
                resolved[name] = copy.deepcopy(param.default)
            else:
                raise self.fail(f"{path}.{name}", "is required")
        return resolved
