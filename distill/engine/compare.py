"""Compare recipe variants over several seeds and print one table (mean and spread over seeds).

A comparison file holds a `base` recipe (written out, or the name or path of a recipe) and `variants`, each a set
of recipe keys merged over the base (mappings merge key by key; `null` removes a named entry such as
`loss.terms.kd`). Any plain recipe is a comparison of one variant, itself, run over the seeds. Every variant is
checked before anything trains. Variants share the teacher: it is trained once (or read from its checkpoint) and
reused from the teacher store.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distill.config.load import LoadedRecipe, from_dict, load_recipe, locate, read_yaml, to_plain
from distill.config.overrides import merge_overrides, remove_null_entries
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
    base: dict[str, Any] | str = setting(
        {}, "the recipe shared by every variant: written out, or a bundled recipe's name or a recipe file's path"
    )
    variants: dict[str, dict[str, Any]] = setting({}, "variant name -> recipe keys merged over base")


@dataclass
class ComparisonPlan:
    """What `distill compare` runs: each checked variant over each seed, in one folder under the runs' root."""

    name: str  # the folder's name under run.root
    description: str
    seeds: list[int]
    variants: dict[str, LoadedRecipe]
    path: Path


def is_comparison(path: Path) -> bool:
    return "variants" in read_yaml(path)


def load_comparison(name_or_path: str, overrides: list[str] = ()) -> ComparisonPlan:
    """The comparison with each variant's checked recipe; `overrides` apply to the base. A plain recipe is a
    comparison of one variant named after it (its folder `<name>_seeds`, apart from the recipe's own runs)."""
    path = locate(name_or_path)
    config = read_yaml(path)
    if "variants" not in config:
        loaded = load_recipe(str(path), list(overrides))
        seeds = Comparison().seeds
        return ComparisonPlan(f"{path.stem}_seeds", loaded.recipe.description, seeds, {path.stem: loaded}, path)
    comparison: Comparison = Checker(str(path)).dataclass(
        Comparison, to_plain(config, str(path), allow_missing=True), ""
    )
    if not comparison.variants:
        raise RecipeError(f"{path}: 'variants' is empty: name at least one variant")
    if "base" not in config:
        raise RecipeError(f"{path}: 'base' is required: the recipe every variant starts from (written out or named)")
    base = merge_overrides(base_config(config.base, path), list(overrides))
    variants = {}
    for name, changes in comparison.variants.items():
        source = f"{path} variant '{name}'"
        start = copy.deepcopy(base)
        kept = remove_null_entries(start, changes or {}, source)  # `null` deletes named entries of the base
        merged = OmegaConf.merge(start, OmegaConf.create(kept))
        variants[name] = from_dict(to_plain(merged, source), source, path)
    return ComparisonPlan(path.stem, comparison.description, comparison.seeds, variants, path)


def base_config(base: Any, path: Path) -> Any:
    """The comparison's base as a config: written out in the file, or read from the recipe it names (a path is
    looked for beside the comparison first)."""
    if not isinstance(base, str):
        return base
    beside = path.parent / base
    recipe = beside if beside.is_file() else locate(base)
    config = read_yaml(recipe)
    if "variants" in config:
        raise RecipeError(f"{path}: 'base' names {recipe}, which is a comparison itself: name a recipe")
    return config


def run_comparison(
    plan: ComparisonPlan, seeds: list[int] | None = None
) -> tuple[Path, dict[str, list[dict[str, float]]]]:
    """Fit every variant for every seed in one comparison folder; return it and the test metrics by variant."""
    seeds = seeds or plan.seeds
    path = plan.path
    first = next(iter(plan.variants.values())).recipe
    folder = new_run_dir(first.run.root, plan.name)
    results: dict[str, list[dict[str, float]]] = {}
    for name, loaded in plan.variants.items():
        for seed in seeds:
            raw = {**loaded.resolved, "seed": seed, "run": {"root": str(folder), "name": f"{name}/seed_{seed}"}}
            result = fit(from_dict(raw, f"{path} variant '{name}' seed {seed}", path))
            results.setdefault(name, []).append({"seed": seed, **result.metrics})
    (folder / SUMMARY_FILE).write_text(json.dumps(results, indent=2))
    return folder, results


def summary_rows(variants: dict[str, LoadedRecipe]) -> tuple[SummaryRow, ...]:
    """The rows a comparison's table shows: those of the variants' task (the first variant's, if they differ)."""
    return task_spec(next(iter(variants.values())).recipe.task).summary
