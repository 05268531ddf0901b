"""`distill keys [section]`: the reference of every recipe key, read from the settings that check recipes; and
`distill tasks` naming each task's own section."""

from __future__ import annotations

import dataclasses
import json

import pytest

from distill.cli import main
from distill.config import from_dict
from distill.config.schema import SchedulerSettings
from distill.tasks import TASKS

MINIMAL = {
    "data": {"name": "digits"},
    "student": {"name": "convnet"},
    "teacher": {"model": {"name": "convnet"}, "train": {}},
    "logger": {"wandb": {}, "mlflow": {}},
}
COMPONENTS = ("data.", "student.", "teacher.model.", "loss.terms.")  # arguments of the registered component


def listed(capsys, *section: str) -> dict[str, tuple[str, str]]:
    """`key -> (type and default line, help line)` as `distill keys` prints them."""
    assert main(["keys", *section]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {}
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        if not line.startswith(" "):
            key, _, rest = line.partition(": ")
            keys[key] = (rest, following.strip() if following.startswith("    ") else "")
    return keys


def flatten(value: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def test_keys_are_those_a_recipe_resolves_to_with_their_defaults_and_help(capsys):
    keys = listed(capsys)
    resolved = flatten(from_dict(MINIMAL, "minimal").resolved)
    settings = [k for k in resolved if not k.startswith(COMPONENTS) or k.startswith("teacher.train.")]
    assert settings and [k for k in settings if k not in keys] == []  # every key a recipe holds is listed
    for key in settings:
        if key.startswith(("data.", "student.", "teacher.model.")):  # set by MINIMAL
            continue
        type_and_default = keys[key][0]
        assert type_and_default.endswith(f" = {json.dumps(resolved[key])}"), (key, type_and_default, resolved[key])
    assert all(help_line for _, help_line in keys.values()), [k for k, (_, h) in keys.items() if not h]
    for _, spec in TASKS.items():  # each task's own section is listed too, with its keys
        if spec.settings_key is not None:
            assert {f"{spec.settings_key}.{f.name}" for f in dataclasses.fields(spec.settings)} <= set(keys)


def test_a_section_lists_its_own_keys_only(capsys):
    section = "teacher.train.scheduler"
    expected = {section} | {f"{section}.{field.name}" for field in dataclasses.fields(SchedulerSettings)}
    assert set(listed(capsys, section)) == expected
    assert set(listed(capsys, "speculative")) >= {"speculative.depth", "speculative.prompts"}


@pytest.mark.parametrize(
    ("section", "expected"),
    [("optimiser", "unknown section 'optimiser' (did you mean 'optimizer'?)"), ("teacher.trian", "'teacher.train'")],
)
def test_an_unknown_section_is_one_line_with_the_closest(capsys, section, expected):
    assert main(["keys", section]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_tasks_name_their_own_section(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    sections = [spec.settings_key for _, spec in TASKS.items() if spec.settings_key is not None]
    assert sections
    for key in sections:
        assert f"`{key}:`" in out and f"`distill keys {key}`" in out


def test_the_keys_of_a_hugging_face_student_are_listed_with_the_defaults_it_resolves_to(capsys):
    keys = listed(capsys, "student")
    recipe = {**MINIMAL, "data": {"name": "text", "tokenizer": "bytes"}, "task": "causal_lm"}
    resolved = from_dict({**recipe, "student": {"name": "hf:someone/model"}, "teacher": None}, "hf").resolved
    assert keys["student.dtype"][0].endswith(f" = {json.dumps(resolved['student']['dtype'])}")
    for key in ("student.revision", "student.attn_implementation", "student.gradient_checkpointing"):
        assert key in keys and keys[key][1], key
