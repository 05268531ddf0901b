"""Find, read, override, check and save recipes."""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from distill.config.components import check_component
from distill.config.overrides import merge_overrides
from distill.config.schema import REQUIRED, RESERVED_TRAINER_KEYS, TRAINER_DEFAULTS, DatasetSpec, Recipe
from distill.config.validate import MISSING, Checker
from distill.errors import DistillError, RecipeError, did_you_mean

SEED_RANGE = (0, 2**32 - 1)  # what the random number generators accept


@dataclass
class LoadedRecipe:
    recipe: Recipe  # typed settings
    resolved: dict[str, Any]  # the same, as plain data with every default filled in (what is printed and saved)
    path: Path | None  # the file it came from
    settings: Any = None  # the task's own section (its spec's settings dataclass), or None

    @property
    def name(self) -> str:
        return self.path.stem if self.path else "recipe"

    def replaced(self, **sections: Any) -> LoadedRecipe:
        """The same recipe with whole top-level sections replaced (checked again)."""
        source = f"{self.path or 'recipe'} ({', '.join(sections)} set)"
        return from_dict({**self.resolved, **sections}, source, self.path)


def bundled_dir() -> Path:
    return Path(str(importlib.resources.files("recipes")))


def bundled_recipes() -> dict[str, Path]:
    """Bundled recipe names -> files, discovered from the recipes folder."""
    return {p.stem: p for p in sorted(bundled_dir().glob("*.yaml"))}


def locate(name_or_path: str) -> Path:
    """A recipe file: an existing path, else a bundled recipe by bare name (with or without .yaml)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = bundled_recipes()
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and stem in bundled:
        return bundled[stem]
    raise DistillError(f"recipe '{name_or_path}' is neither a file nor a bundled recipe{did_you_mean(stem, bundled)}")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DistillError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        config = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    except OmegaConfBaseException as exc:  # e.g. an unbalanced `${` in a value
        key = getattr(exc, "full_key", None)
        raise RecipeError(f"{path}: {f'{key!r}: ' if key else ''}{str(exc).splitlines()[0]}") from None
    if not OmegaConf.is_dict(config):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got a {type(config).__name__}")
    return config


def to_plain(config: Any, source: str, allow_missing: bool = False) -> dict[str, Any]:
    """The config as plain data with interpolations resolved; a `???` value left unset is an error."""
    missing = sorted(OmegaConf.missing_keys(config)) if not allow_missing else []
    if missing:
        raise RecipeError(f"{source}: '{missing[0]}' must be set (it is ??? in the recipe): add {missing[0]}=VALUE")
    try:
        return OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as exc:
        if allow_missing and isinstance(exc, (InterpolationToMissingValueError, MissingMandatoryValue)):
            return OmegaConf.to_container(config, resolve=False)  # refers to a `???` value the command line gives
        raise RecipeError(f"{source}: {str(exc).splitlines()[0]}") from None


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> LoadedRecipe:
    """Read a recipe, apply `key=value` overrides, and check every key."""
    path = locate(name_or_path)
    file_config = read_yaml(path)
    if "variants" in file_config and "base" in file_config:
        raise RecipeError(f"{path} is a comparison of variants: run it with `distill compare --recipe {path.stem}`")
    # the file alone must be valid, so that its mistakes are reported against it; `???` values may wait for overrides
    check_recipe(to_plain(file_config, str(path), allow_missing=True), Checker(str(path), check_component, True), False)
    if not overrides:
        return from_dict(to_plain(file_config, str(path)), str(path), path)
    source = f"{path} with command-line overrides"
    return from_dict(to_plain(merge_overrides(file_config, overrides), source), source, path)


def apply_overrides(config: Any, overrides: list[str]) -> dict[str, Any]:
    """A plain dict of `config` (dict or OmegaConf) with the overrides applied (`distill.config.overrides`)."""
    return to_plain(merge_overrides(config, overrides), "command line")


def from_dict(raw: dict[str, Any], source: str, path: Path | None = None) -> LoadedRecipe:
    """Check a plain recipe dict and build the typed settings."""
    checker = Checker(source, component=check_component)
    recipe, settings, key = check_recipe(raw, checker, require=True)
    resolved = plain(dataclasses.asdict(recipe))
    if key is not None:  # the task's own section, printed right after `task`
        items = list(resolved.items())
        at = [k for k, _ in items].index("task") + 1
        resolved = dict([*items[:at], (key, plain(dataclasses.asdict(settings))), *items[at:]])
    return LoadedRecipe(recipe=recipe, resolved=resolved, path=path, settings=settings)


def check_recipe(raw: dict[str, Any], checker: Checker, require: bool) -> tuple[Recipe, Any, str | None]:
    """The typed recipe, its task's own settings and their recipe key (None, None when the task has none)."""
    raw = dict(raw)
    spec, section = take_task_section(raw, checker)
    recipe: Recipe = checker.dataclass(Recipe, raw, "", require=REQUIRED if require else ())
    key = spec.settings_key if spec is not None else None
    settings = checker.dataclass(spec.settings, section, key) if key is not None else None
    recipe.trainer = check_trainer(checker, recipe.trainer, "trainer")
    for which in ("teacher", "second_teacher"):
        frozen = getattr(recipe, which)
        if frozen is None or frozen.train is None:
            continue
        train = frozen.train
        train.trainer = check_trainer(checker, train.trainer, f"{which}.train.trainer")
        if train.data and recipe.data is not None:  # written out in full: the teacher's data, every default shown
            data = teacher_data(recipe.data, train.data)
            train.data = dict(checker.value(DatasetSpec, data, f"{which}.train.data"))
    if require:
        check_seeds(checker, recipe)
        from distill.tasks.loss_terms import check_terms

        check_frozen(checker, recipe, spec)
        check_terms(spec, recipe.loss.terms, checker.fail)
        if spec.check is not None:
            spec.check(recipe, settings, checker.fail)
    return recipe, settings, key


def take_task_section(raw: dict[str, Any], checker: Checker) -> tuple[Any, dict[str, Any]]:
    """The recipe's task (its `TaskSpec`) and its own section, taken out of `raw`. A section of another task is
    refused; with the task still to be given (`???`), the sections are taken out unchecked and the spec is None."""
    from distill.tasks.spec import TASKS, task_spec  # importing the package registers the bundled tasks

    task = raw.get("task", Recipe.task)
    if not isinstance(task, str):
        return None, {}  # the Recipe check names the wrong type
    sections = {spec.settings_key: spec for _, spec in TASKS.items() if spec.settings_key is not None}
    if checker.allow_missing and (task == MISSING or task.startswith("${")):
        for key in sections:
            raw.pop(key, None)
        return None, {}
    try:
        spec = task_spec(task)
    except DistillError:
        raise checker.fail("task", f"must be a registered task, got {task!r}{did_you_mean(task, TASKS)}") from None
    for key, other in sections.items():
        if key in raw and key != spec.settings_key:
            # recipes saved by earlier versions hold every task's section at its defaults (of their version, which
            # may lack keys added since): those are dropped
            defaults = plain(dataclasses.asdict(other.settings()))
            if isinstance(raw[key], dict) and all(k in defaults and defaults[k] == v for k, v in raw[key].items()):
                del raw[key]
                continue
            raise checker.fail(key, f"is the section of task {other.name}; this recipe's task is {spec.name}")
    section = raw.pop(spec.settings_key, None) if spec.settings_key is not None else None
    return spec, section if section is not None else {}


def check_seeds(checker: Checker, recipe: Recipe) -> None:
    low, high = SEED_RANGE
    seeds = {"seed": recipe.seed}
    for which in ("teacher", "second_teacher"):
        section = getattr(recipe, which)
        if section is not None and section.train is not None:
            seeds[f"{which}.train.seed"] = section.train.seed
    for path, seed in seeds.items():
        if not low <= seed <= high:
            raise checker.fail(path, f"must be in [{low}, {high}], got {seed}")


def teacher_data(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The teacher run's data: `changes` replace `data` when they name a dataset, else are merged over it."""
    return dict(changes) if "name" in changes else {**data, **changes}


def check_trainer(checker: Checker, given: dict[str, Any], path: str) -> dict[str, Any]:
    """Trainer keys are checked against lightning.Trainer's own signature, then passed to it unchanged; the strategy
    must be one that can run here (config.strategies)."""
    from lightning import Trainer

    from distill.config.strategies import strategy_problem

    for key, why in RESERVED_TRAINER_KEYS.items():
        if key in given:
            raise checker.fail(f"{path}.{key}", f"cannot be set in a recipe: {why}")
    checker.arguments(Trainer, given, path)
    resolved = {**TRAINER_DEFAULTS, **given}
    problem = None if checker.allow_missing else strategy_problem(resolved)  # `???` values are given later
    if problem is not None:  # refused now, before a teacher is trained or data fetched for a run that cannot start
        raise checker.fail(f"{path}.strategy", problem)
    return resolved


def check_frozen(checker: Checker, recipe: Recipe, spec: Any) -> None:
    """The frozen-model sections the task reads (its spec's `frozen` roles), each with a source of weights."""
    from distill.tasks.spec import FROZEN_SECTIONS

    for section in FROZEN_SECTIONS:
        given, role = getattr(recipe, section), spec.frozen.get(section)
        if given is not None and role is None:
            raise checker.fail(section, f"is not read by task {spec.name}: remove it")
        if given is None and role is not None and role.required:
            raise checker.fail(section, f"is required by {spec.name}: {role.what}")
    if recipe.teacher is None and recipe.loss.terms and spec.objective is None:
        raise checker.fail("teacher", "is missing: loss.terms distill from a teacher; add a teacher section")
    for section in FROZEN_SECTIONS:
        check_teacher_source(checker, getattr(recipe, section), section)
    if recipe.teacher is not None and recipe.teacher.cache is not None and not spec.reads_teacher_cache:
        raise checker.fail("teacher.cache", f"is not read by task {spec.name}: its teacher runs on every batch")
    if recipe.teacher is not None and recipe.teacher.cache is not None:
        check_cache_terms(checker, recipe)


def check_cache_terms(checker: Checker, recipe: Recipe) -> None:
    """The teacher cache keeps the teacher's outputs, not its intermediate layers: feature terms are refused."""
    from distill.tasks.feature_terms import reads_features
    from distill.tasks.loss_terms import LOSSES

    for name, term in recipe.loss.terms.items():
        if reads_features(LOSSES.get(term["loss"])):
            raise checker.fail(
                f"loss.terms.{name}",
                "reads the teacher's intermediate layers, which teacher.cache does not store (it keeps the "
                "teacher's outputs only): drop teacher.cache, or the feature term",
            )


def check_teacher_source(checker: Checker, teacher: Any, path: str) -> None:
    if teacher is None:
        return
    if teacher.model is None:
        raise checker.fail(f"{path}.model", "is required: the teacher's architecture, e.g. {name: convnet}")
    # hf: and open_clip: models bring their own weights, as a timm model with pretrained: true does
    pretrained = teacher.model["name"].startswith(("hf:", "open_clip:")) or teacher.model.get("pretrained") is True
    if teacher.checkpoint_sha256 is not None:
        if not str(teacher.checkpoint or "").startswith(("https://", "http://")):
            raise checker.fail(f"{path}.checkpoint_sha256", "checks a checkpoint given by URL (https://...) only")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", teacher.checkpoint_sha256):
            raise checker.fail(f"{path}.checkpoint_sha256", "must be 64 hexadecimal digits (a sha256)")
    if teacher.checkpoint is None and teacher.train is None and teacher.recipe is None and not pretrained:
        raise checker.fail(
            path,
            "has neither 'checkpoint' (a path to its weights) nor 'train' (settings to train it first) "
            "nor 'recipe' (a recipe whose best student it is): add one",
        )


def plain(value: Any) -> Any:
    """Built-in types only (dict subclasses and tuples flattened), ready for YAML."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def escape_interpolations(value: Any) -> Any:
    """Strings with `${` escaped (`\\${`, with any backslashes before it doubled), so resolved values that hold a
    literal `${` are read back as the same text rather than as an interpolation."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_interpolations(v) for v in value]
    return value


def to_yaml(resolved: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(escape_interpolations(resolved)), sort_keys=False)


def save_recipe(resolved: dict[str, Any], path: Path) -> None:
    path.write_text(to_yaml(resolved))
