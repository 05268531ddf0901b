"""Command-line overrides of a recipe, applied in the order given:

- `key=value` sets a value; a mapping (`key={...}`) replaces the mapping at `key` whole, so that
  `loss.terms={dkd: {weight: 1.0}}` leaves DKD alone. Dotted keys (`loss.terms.kd.temperature=2`) change one key
  inside a mapping and keep the rest.
- `~key` deletes a key the recipe sets; it then takes its default, as if the recipe had not written it.
- `key=null` deletes an entry of a mapping of named entries whose entries cannot be null (`loss.terms.kd=null`);
  where null is a legal value (`teacher.checkpoint=null`) it sets null.

Comparison variants (`distill compare`) merge key by key instead, and remove named entries with null the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.config.schema import Recipe
from distill.errors import RecipeError, did_you_mean

DELETE = "~"


def merge_overrides(config: Any, overrides: list[str]) -> DictConfig:
    """A copy of `config` (a dict or an OmegaConf config) with the overrides applied one after the other."""
    merged = copy.deepcopy(config) if OmegaConf.is_config(config) else OmegaConf.create(config)
    for item in overrides:
        apply_override(merged, item)
    return merged


def apply_override(config: DictConfig, item: str) -> None:
    """Apply one `key=value`, `~key` or `key=null` to `config` in place."""
    if item.startswith(DELETE):
        key = item[len(DELETE) :].partition("=")[0]
        if not key:
            raise RecipeError(f"command line: '{item}' names no key: write ~KEY to delete one, e.g. ~loss.terms.kd")
        if "=" in item:
            raise RecipeError(f"command line: '{item}': a deletion takes no value; write ~{key}")
        delete_key(config, key, f"command line: '{item}'")
        return
    key, value = split_override(item)
    if value is None and null_removes(key):
        delete_key(config, key, f"command line: '{item}'")
        return
    try:
        OmegaConf.update(config, key, value, merge=False)  # a mapping replaces the one there, whole
    except OmegaConfBaseException as exc:
        raise RecipeError(f"command line: '{item}': {str(exc).splitlines()[0]}") from None


def split_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, the value read as YAML, as OmegaConf reads a dotlist: `${...}` kept as text)."""
    if "=" not in item or item.startswith("="):
        raise RecipeError(f"command line: override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        parsed = OmegaConf.from_dotlist([f"value={raw}"])
        return key, OmegaConf.to_container(parsed, resolve=False)["value"]
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise RecipeError(f"command line: bad override '{item}': {str(exc).splitlines()[0]}") from None


def delete_key(config: DictConfig, key: str, source: str) -> None:
    """Delete the dotted `key` from `config`; a key the config does not hold is an error naming the closest."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []  # `???` keys too
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            keys = [part]
        if part not in keys:
            missing = ".".join(parts[: depth + 1])
            where = "" if missing == key else f": it has no '{missing}'"
            hint = did_you_mean(part, keys) if keys else ""
            raise RecipeError(f"{source}: the recipe does not set '{key}', so there is nothing to delete{where}{hint}")
        if depth == len(parts) - 1:
            del node[int(part) if isinstance(node, ListConfig) else part]
            return
        try:
            node = node[int(part) if isinstance(node, ListConfig) else part]
        except OmegaConfBaseException:  # `???` or an interpolation: it holds no keys of its own yet
            node = None


def remove_null_entries(config: DictConfig, changes: Any, source: str, prefix: str = "") -> Any:
    """`changes` (a comparison variant, merged key by key over `config`) without its null named entries, which
    are deleted from `config` in place instead: `{loss: {terms: {kd: null}}}` removes KD from the base."""
    if not isinstance(changes, dict):
        return changes
    kept = {}
    for name, value in changes.items():
        key = f"{prefix}{name}"
        if value is None and null_removes(key):
            delete_key(config, key, f"{source}: '{key}: null'")
        else:
            kept[name] = remove_null_entries(config, value, source, f"{key}.")
    return kept


def null_removes(key: str) -> bool:
    """Whether `key=null` deletes `key`: it names an entry of a mapping of named entries (`dict[str, X]` in the
    schema, like `loss.terms`) whose entries cannot be null. Elsewhere null is a value, checked like any other."""
    *parents, _ = key.split(".")
    if not parents:
        return False
    mapping = annotation_at(parents)
    if typing.get_origin(mapping) is not dict:
        return False
    entry = typing.get_args(mapping)[1]
    return not accepts_null(entry)


def annotation_at(parts: list[str]) -> Any:
    """The schema's annotation of the dotted key `parts` (Any where the schema does not say: components, the
    trainer's arguments, unknown keys)."""
    annotation: Any = section_type(parts[0])
    for part in parts[1:]:
        annotation = without_none(annotation)
        if dataclasses.is_dataclass(annotation):
            annotation = typing.get_type_hints(annotation).get(part, Any)
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1]
        else:
            return Any
    return without_none(annotation)


def section_type(key: str) -> Any:
    """The annotation of a top-level key: a Recipe field, or a task's own section (its settings dataclass)."""
    hints = typing.get_type_hints(Recipe)
    if key in hints:
        return hints[key]
    from distill.tasks.spec import TASKS  # only asked for keys the Recipe does not have

    sections = {spec.settings_key: spec.settings for _, spec in TASKS.items() if spec.settings_key is not None}
    return sections.get(key, Any)


def without_none(annotation: Any) -> Any:
    """`X | None` -> X; a union of several other types -> Any (the schema does not pick one)."""
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return annotation
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    return options[0] if len(options) == 1 else Any


def accepts_null(annotation: Any) -> bool:
    if annotation is Any or annotation is None or annotation is type(None):
        return True
    return typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in typing.get_args(annotation)
