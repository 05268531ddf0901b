"""The reference of every recipe key (`distill keys`): its type, default and help, read from the typed settings
that check recipes, so the reference cannot drift from what is checked."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from distill.config.overrides import without_none
from distill.config.schema import TRAINER_DEFAULTS, Recipe
from distill.config.validate import type_name
from distill.errors import DistillError, did_you_mean
from distill.models.lora import LoRASettings

NO_DEFAULT = object()


@dataclass(frozen=True)
class KeyDoc:
    """One recipe key: `default` is NO_DEFAULT for a mapping whose own keys carry the defaults."""

    key: str
    type: str
    default: Any
    help: str

    @property
    def shown_default(self) -> str:
        return "" if self.default is NO_DEFAULT else json.dumps(self.default)


def recipe_keys() -> list[KeyDoc]:
    """Every key of a recipe, in the order `--print` writes them, then each task's own section."""
    docs = list(dataclass_keys(Recipe, ""))
    for key, (task, settings) in task_sections().items():
        docs.append(KeyDoc(key, "a mapping", NO_DEFAULT, f"task {task} only: its own settings"))
        docs.extend(dataclass_keys(settings, f"{key}."))
    return docs


def task_sections() -> dict[str, tuple[str, type]]:
    """Each task's own recipe section: key -> (task name, settings dataclass)."""
    from distill.tasks.spec import TASKS  # importing it registers the bundled tasks

    return {spec.settings_key: (name, spec.settings) for name, spec in TASKS.items() if spec.settings_key is not None}


def keys_of(section: str | None) -> list[KeyDoc]:
    """The keys under `section` (a dotted key, e.g. `optimizer` or `teacher.train`; None: all of them). An unknown
    section is a DistillError naming the closest one."""
    docs = recipe_keys()
    if section is None:
        return docs
    chosen = [doc for doc in docs if doc.key == section or doc.key.startswith(f"{section}.")]
    if not chosen:
        sections = {doc.key for doc in docs if "." in section or "." not in doc.key}
        raise DistillError(f"keys: unknown section '{section}'{did_you_mean(section, sections)}")
    return chosen


def dataclass_keys(cls: type, prefix: str) -> Iterator[KeyDoc]:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        key, annotation = f"{prefix}{item.name}", hints[item.name]
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        help_text = item.metadata.get("help", "")
        inner = without_none(annotation)
        if dataclasses.is_dataclass(inner):  # a section: its own keys carry the defaults
            shown = NO_DEFAULT if dataclasses.is_dataclass(default) else default
            yield KeyDoc(key, type_name(annotation), shown, help_text)
            yield from dataclass_keys(inner, f"{key}.")
            continue
        yield KeyDoc(key, describe_type(annotation), default, help_text)
        yield from entry_keys(key, inner)


def entry_keys(key: str, annotation: Any) -> Iterator[KeyDoc]:
    """The keys inside a mapping that the schema leaves open: named loss terms, the student's LoRA section, and the
    Trainer arguments distill fills in when a recipe leaves them out (both `trainer` sections)."""
    if typing.get_origin(annotation) is dict and typing.get_args(annotation)[1] is not Any:
        entry = typing.get_args(annotation)[1]
        yield KeyDoc(
            f"{key}.<name>", describe_type(entry), NO_DEFAULT, "a named entry (`distill losses` lists the loss terms)"
        )
    if key == "student":
        yield KeyDoc(
            "student.lora", "a mapping or null", None, "LoRA adapters on the student (through peft); null: none"
        )
        yield from dataclass_keys(LoRASettings, "student.lora.")
        yield from MODEL_OPTION_KEYS
    if key.rsplit(".", 1)[-1] == "trainer":
        for name, value in TRAINER_DEFAULTS.items():
            yield KeyDoc(f"{key}.{name}", "a lightning.Trainer argument", value, "distill's default when not given")


# Keys of a Hugging Face student (`hf:<name>`) that distill reads or sets, beyond the model's own config arguments.
MODEL_OPTION_KEYS = (
    KeyDoc(
        "student.dtype",
        "one of 'float32', 'bfloat16', 'float16', 'auto'",
        "float32",
        "hf: students: the precision the weights are loaded and trained in (fp32 master weights under bf16-mixed)",
    ),
    KeyDoc(
        "student.revision",
        "a string or null",
        None,
        "hf: models (teacher.model too): the Hub branch, tag or commit to read; runs record the commit",
    ),
    KeyDoc(
        "student.attn_implementation",
        "one of 'sdpa', 'eager', 'flex_attention', 'flash_attention_2', 'flash_attention_3'",
        "sdpa",
        "hf: and llama models (teacher.model too): the attention kernel",
    ),
    KeyDoc(
        "student.gradient_checkpointing",
        "true or false",
        False,
        "recompute each decoder layer in the backward pass instead of keeping its activations (transformer models)",
    ),
)


def describe_type(annotation: Any) -> str:
    """`type_name`, except that a component (a dict subclass) shows the form its docstring gives."""
    inner = without_none(annotation)
    if isinstance(inner, type) and issubclass(inner, dict) and inner is not dict:
        form = re.search(r"`([^`]+)`", inner.__doc__ or "")
        shown = form.group(1) if form else "a mapping"
        return shown if inner is annotation else f"{shown} or null"
    return type_name(annotation)
