"""Compare recipe variants over several seeds and print one table (mean and spread over seeds).

A comparison file holds a complete `base` recipe and `variants`, each a set of recipe keys merged over the
base (mappings merge key by key). Every variant is checked before anything trains. Variants share the
teacher: it is trained once (or read from its checkpoint) and reused from the teacher store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distill.config.load import LoadedRecipe, from_dict, locate, merge_overrides, read_yaml, to_plain
from distill.config.schema import setting
from distill.config.validate import Checker
from distill.engine.pipeline import fit
from distill.engine.runs import new_run_dir
from distill.errors import RecipeError
from distill.tasks import SummaryRow, task_spec

SUMMARY_FILE = "summary.json"


@dataclass
class Comparison:
    description: str = setting("", "one line: what is compared (shown by `distill recipes`)")
    seeds: list[int] = setting([0, 1, 2, 3, 4], "every variant runs once per seed")
    base: dict[str, Any] = setting({}, "a complete recipe shared by every variant")
    variants: dict[str, dict[str, Any]] = setting({}, "variant name -> recipe keys merged over base")


def is_comparison(path: Path) -> bool:
    return "variants" in read_yaml(path)


def load_comparison(name_or_path: str, overrides: list[str] = ()) -> tuple[Comparison, dict[str, LoadedRecipe], Path]:
    """The comparison and each variant's checked recipe; `overrides` apply to the base."""
    path = locate(name_or_path)
    config = read_yaml(path)
    comparison: Comparison = Checker(str(path)).dataclass(
        Comparison, to_plain(config, str(path), allow_missing=True), ""
    )
    if not comparison.variants:
        raise RecipeError(f"{path}: 'variants' is empty: name at least one variant")
    base = merge_overrides(config.base, overrides) if overrides else config.base
    variants = {}
    for name, changes in comparison.variants.items():
        merged = OmegaConf.merge(base, OmegaConf.create(changes or {}))
        source = f"{path} variant '{name}'"
        variants[name] = from_dict(to_plain(merged, source), source, path)
    return comparison, variants, path


def run_comparison(
    comparison: Comparison, variants: dict[str, LoadedRecipe], path: Path, seeds: list[int] | None = None
) -> tuple[Path, dict[str, list[dict[str, float]]]]:
    """Fit every variant for every seed in one comparison folder; return it and the test metrics by variant."""
    seeds = seeds or comparison.seeds
    first = next(iter(variants.values())).recipe
    folder = new_run_dir(first.run.root, path.stem)
    results: dict[str, list[dict[str, float]]] = {}
    for name, loaded in variants.items():
        for seed in seeds:
            raw = {**loaded.resolved, "seed": seed, "run": {"root": str(folder), "name": f"{name}/seed_{seed}"}}
            result = fit(from_dict(raw, f"{path} variant '{name}' seed {seed}", path))
            results.setdefault(name, []).append({"seed": seed, **result.metrics})
    (folder / SUMMARY_FILE).write_text(json.dumps(results, indent=2))
    return folder, results


def summary_rows(variants: dict[str, LoadedRecipe]) -> tuple[SummaryRow, ...]:
    """The rows a comparison's table shows: those of the variants' task (the first variant's, if they differ)."""
    return task_spec(next(iter(variants.values())).recipe.task).summary
