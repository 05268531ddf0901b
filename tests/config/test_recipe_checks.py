"""Recipes are checked key by key: errors name the key path, where it came from and the closest valid key."""

from __future__ import annotations

import inspect
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import distill.registry as registry
from distill.config.load import load_recipe
from distill.config.schema import TRAINER_DEFAULTS, Recipe
from distill.models.small import ConvNet
from tests.config.recipe_texts import BASE, KD, TEACHER, load_error, write  # noqa: F401

# ---------------------------------------------------------------- a valid recipe, with every default shown


def test_minimal_recipe_resolves_every_default(tmp_path: Path) -> None:
    loaded = load_recipe(str(write(tmp_path, BASE)))
    resolved = loaded.resolved

    assert set(resolved) == {f for f in Recipe.__dataclass_fields__}
    assert resolved["seed"] == 0
    assert resolved["optimizer"] == {
        "name": "sgd",
        "lr": 0.05,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "nesterov": False,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    }
    assert resolved["scheduler"] == {
        "name": "multistep",
        "milestones": [150, 180, 210],
        "gamma": 0.1,
        "warmup_epochs": 0.0,
        "min_lr": 0.0,
    }
    assert resolved["loss"] == {"ce_weight": 1.0, "label_smoothing": 0.0, "terms": {}}
    assert resolved["teacher"] is None
    assert resolved["run"] == {"root": "runs", "name": None}
    # the model's own arguments, from its signature, minus what the dataset sets
    convnet_defaults = {
        name: p.default
        for name, p in inspect.signature(ConvNet).parameters.items()
        if name not in ("num_classes", "in_chans")
    }
    assert resolved["student"] == {"name": "convnet", **convnet_defaults}
    assert resolved["student"]["widths"] == [32, 64]
    assert resolved["data"]["name"] == "digits"
    assert resolved["data"]["batch_size"] == 64
    assert resolved["data"]["train_samples"] is None
    assert resolved["trainer"] == TRAINER_DEFAULTS
    assert resolved["trainer"]["max_epochs"] == 10
    # plain data only: it prints and saves as ordinary YAML
    assert yaml.safe_load(yaml.safe_dump(resolved)) == resolved
    assert type(resolved["student"]) is dict
    assert loaded.name == "recipe"
    assert loaded.recipe.optimizer.lr == 0.05


def test_recipe_values_replace_defaults_and_ints_become_floats(tmp_path: Path) -> None:
    text = KD + "optimizer: {name: adamw, lr: 1, betas: [0.8, 0.9]}\ntrainer: {max_epochs: 2, accelerator: cpu}\n"
    loaded = load_recipe(str(write(tmp_path, text)))
    assert loaded.recipe.optimizer.lr == 1.0
    assert isinstance(loaded.recipe.optimizer.lr, float)
    assert loaded.resolved["optimizer"]["betas"] == [0.8, 0.9]
    assert loaded.resolved["trainer"] == {**TRAINER_DEFAULTS, "max_epochs": 2, "accelerator": "cpu"}
    expected = {"loss": "kd", "weight": 0.9, "temperature": 4.0, "standardize": False}
    assert loaded.resolved["loss"]["terms"] == {"kd": expected}


def test_a_term_may_name_its_loss(tmp_path: Path) -> None:
    text = BASE + TEACHER + "loss: {terms: {soft: {loss: kd, weight: 1}}}\n"
    terms = load_recipe(str(write(tmp_path, text))).resolved["loss"]["terms"]
    assert terms == {"soft": {"loss": "kd", "weight": 1.0, "temperature": 4.0, "standardize": False}}


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        (BASE + "optimiser: {lr: 0.1}\n", "optimiser", "optimizer"),
        (BASE + "optimizer: {lrr: 0.1}\n", "optimizer.lrr", "lr"),
        (BASE + "scheduler: {milestone: [1]}\n", "scheduler.milestone", "milestones"),
        ("data: {name: digits}\nstudent: {name: convnet, widht: [4]}\n", "student.widht", "widths"),
        (
            BASE + TEACHER + "loss: {terms: {kd: {weight: 1, temprature: 2}}}\n",
            "loss.terms.kd.temprature",
            "temperature",
        ),
        ("data: {name: digits, batchsize: 8}\nstudent: {name: convnet}\n", "data.batchsize", "batch_size"),
        (BASE + "trainer: {max_epoch: 3}\n", "trainer.max_epoch", "max_epochs"),
        (
            BASE + "teacher: {model: {name: convnet}, train: {trainer: {max_epoch: 3}}}\n",
            "teacher.train.trainer.max_epoch",
            "max_epochs",
        ),
        (BASE + "teacher: {modle: {name: convnet}}\n", "teacher.modle", "model"),
    ],
)
def test_unknown_key_names_path_file_and_closest(tmp_path: Path, text: str, key: str, suggestion: str) -> None:
    message = load_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}: ")
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{suggestion}'?" in message


@pytest.mark.parametrize("key", ["callbacks", "logger", "default_root_dir", "enable_checkpointing", "plugins"])
def test_reserved_trainer_keys_are_refused(tmp_path: Path, key: str) -> None:
    message = load_error(tmp_path, BASE + f"trainer: {{{key}: null}}\n")
    assert f"'trainer.{key}' cannot be set in a recipe" in message


def test_injected_model_arguments_are_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, "data: {name: digits}\nstudent: {name: convnet, num_classes: 3}\n")
    assert "'student.num_classes' is set from the dataset" in message


# ---------------------------------------------------------------- wrong types and choices


@pytest.mark.parametrize(
    ("snippet", "path", "expected"),
    [
        ("optimizer: {lr: fast}", "optimizer.lr", "must be a number, got 'fast'"),
        ("optimizer: {lr: true}", "optimizer.lr", "must be a number, got True"),
        ("optimizer: {nesterov: 1}", "optimizer.nesterov", "must be true or false, got 1"),
        ("optimizer: {betas: 0.9}", "optimizer.betas", "must be a list of"),
        ("optimizer: {betas: [0.9, high]}", "optimizer.betas.1", "must be a number, got 'high'"),
        ("trainer: {max_epochs: ten}", "trainer.max_epochs", "must be an integer, got 'ten'"),
        ("trainer: {max_epochs: 2.5}", "trainer.max_epochs", "must be an integer, got 2.5"),
        ("trainer: {max_epochs: true}", "trainer.max_epochs", "must be an integer, got True"),
        ("seed: 1.5", "seed", "must be an integer, got 1.5"),
        ("seed: true", "seed", "must be an integer, got True"),
        ("seed: '3'", "seed", "must be an integer, got '3'"),
        ("run: {name: [a]}", "run.name", "must be a string, got list"),
        ("run: 5", "run", "must be a mapping"),
        ("scheduler: {warmup_epochs: false}", "scheduler.warmup_epochs", "must be a number, got False"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path: Path, snippet: str, path: str, expected: str) -> None:
    message = load_error(tmp_path, BASE + snippet + "\n")
    assert f"'{path}' {expected}" in message


@pytest.mark.parametrize(
    ("student", "path", "expected"),
    [
        ("{name: convnet, widths: 8}", "student.widths", "must be a list of an integer, got 8"),
        ("{name: convnet, widths: [8, true]}", "student.widths.1", "must be an integer, got True"),
        ("{name: convnet, hidden: 1.5}", "student.hidden", "must be an integer, got 1.5"),
        ("{name: convnet, dropout: none}", "student.dropout", "must be a number, got 'none'"),
        ("{widths: [8]}", "student.name", "is required"),
    ],
)
def test_model_argument_types_follow_the_signature(tmp_path: Path, student: str, path: str, expected: str) -> None:
    message = load_error(tmp_path, f"data: {{name: digits}}\nstudent: {student}\n")
    assert f"'{path}' {expected}" in message


def test_dataset_argument_types_follow_the_signature(tmp_path: Path) -> None:
    message = load_error(tmp_path, "data: {name: digits, batch_size: true}\nstudent: {name: convnet}\n")
    assert "'data.batch_size' must be an integer, got True" in message
    message = load_error(tmp_path, "data: {name: digits, train_samples: many}\nstudent: {name: convnet}\n")
    assert "'data.train_samples' must be an integer, got 'many'" in message


def test_literal_choice_suggests_the_closest(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "optimizer: {name: adam}\n")
    assert "'optimizer.name' must be one of 'sgd', 'adamw', got 'adam' (did you mean 'adamw'?)" in message
    message = load_error(tmp_path, BASE + "scheduler: {name: cosin}\n")
    assert "(did you mean 'cosine'?)" in message


def test_trainer_literal_choice_is_checked_against_lightning(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "trainer: {precision: 32-fals}\n")
    assert "'trainer.precision' must be" in message
    loaded = load_recipe(str(write(tmp_path, BASE + "trainer: {precision: bf16-mixed, devices: [0]}\n")))
    assert loaded.resolved["trainer"]["precision"] == "bf16-mixed"
    assert loaded.resolved["trainer"]["devices"] == [0]


# ---------------------------------------------------------------- components


def test_unknown_model_suggests_the_closest_registered(tmp_path: Path) -> None:
    message = load_error(tmp_path, "data: {name: digits}\nstudent: {name: convnett}\n")
    assert "'student.name': unknown model 'convnett' (did you mean 'convnet'?)" in message
    message = load_error(tmp_path, BASE + "teacher: {model: {name: convnte}, checkpoint: t.pt}\n")
    assert "'teacher.model.name': unknown model 'convnte' (did you mean 'convnet'?)" in message


def test_unknown_dataset_suggests_the_closest(tmp_path: Path) -> None:
    message = load_error(tmp_path, "data: {name: digit}\nstudent: {name: convnet}\n")
    assert "'data.name': unknown dataset 'digit' (did you mean 'digits'?)" in message


def test_unknown_loss(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + TEACHER + "loss: {terms: {kdd: {weight: 1}}}\n")
    assert "'loss.terms.kdd': unknown loss 'kdd' (did you mean 'kd'?)" in message
    message = load_error(tmp_path, BASE + TEACHER + "loss: {terms: {soft: {loss: hinton, weight: 1}}}\n")
    assert "'loss.terms.soft.loss': unknown loss 'hinton'" in message


def test_loss_term_without_weight_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + TEACHER + "loss: {terms: {kd: {temperature: 2}}}\n")
    assert "'loss.terms.kd.weight' is required" in message


def test_loss_term_weight_must_be_a_number(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + TEACHER + "loss: {terms: {kd: {weight: true}}}\n")
    assert "'loss.terms.kd.weight' must be a number, got True" in message


@pytest.mark.parametrize("temperature", ["-2", "0"])
def test_invalid_temperature_names_the_term(tmp_path: Path, temperature: str) -> None:
    message = load_error(
        tmp_path, BASE + TEACHER + f"loss: {{terms: {{kd: {{weight: 1, temperature: {temperature}}}}}}}\n"
    )
    assert "'loss.terms.kd' is invalid: temperature must be > 0" in message


def test_library_models_pass_through_with_their_arguments(tmp_path: Path) -> None:
    text = (
        "data: {name: digits}\n"
        "student: {name: 'timm:resnet18', drop_rate: 0.1}\n"
        "teacher: {model: {name: 'torchvision:resnet18', weights: null}, checkpoint: t.pt}\n"
    )
    resolved = load_recipe(str(write(tmp_path, text))).resolved
    assert resolved["student"] == {"name": "timm:resnet18", "drop_rate": 0.1}
    assert resolved["teacher"]["model"] == {"name": "torchvision:resnet18", "weights": None}


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module defining a model `Net`, with nothing allowed; the allowed set is restored afterwards."""
    monkeypatch.setattr(registry, "_ALLOWED_MODULES", set())
    name = f"distill_test_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / f"{name}.py").write_text(
        "from torch import nn\n\n\n"
        "class Net(nn.Linear):\n"
        "    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 4) -> None:\n"
        "        super().__init__(width, num_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    yield name
    sys.modules.pop(name, None)


def test_module_model_is_refused_unless_allowed(tmp_path: Path, user_module: str) -> None:
    text = f"data: {{name: digits}}\nstudent: {{name: '{user_module}:Net'}}\n"
    message = load_error(tmp_path, text)
    assert f"'student.name': model '{user_module}:Net'" in message
    assert f"--allow-module {user_module}" in message
    assert user_module not in sys.modules  # nothing was imported

    registry.allow_modules([user_module])
    loaded = load_recipe(str(write(tmp_path, text)))
    assert loaded.resolved["student"] == {"name": f"{user_module}:Net", "width": 4}
    message = load_error(tmp_path, f"data: {{name: digits}}\nstudent: {{name: '{user_module}:Net', widht: 2}}\n")
    assert "unknown key 'student.widht' (did you mean 'width'?)" in message


# ---------------------------------------------------------------- required sections and the teacher


def test_teacher_with_neither_checkpoint_nor_train(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "teacher: {model: {name: convnet}}\n")
    assert "'teacher' has neither 'checkpoint'" in message
    assert "'train'" in message
    assert "add one" in message


def test_teacher_without_model(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "teacher: {checkpoint: t.pt}\n")
    assert "'teacher.model' is required" in message


def test_loss_terms_without_teacher(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "loss: {terms: {kd: {weight: 1}}}\n")
    assert "'teacher' is missing" in message
    assert "add a teacher section" in message


@pytest.mark.parametrize(
    ("text", "missing"), [("student: {name: convnet}\n", "data"), ("data: {name: digits}\n", "student"), ("", "data")]
)
def test_data_and_student_are_required(tmp_path: Path, text: str, missing: str) -> None:
    assert f"'{missing}' is required" in load_error(tmp_path, text)


def test_teacher_can_be_trained_first(tmp_path: Path) -> None:
    text = BASE + "teacher:\n  model: {name: convnet}\n  train: {optimizer: {name: adamw}, trainer: {max_epochs: 2}}\n"
    train = load_recipe(str(write(tmp_path, text))).resolved["teacher"]["train"]
    assert train["optimizer"]["name"] == "adamw"
    assert train["optimizer"]["lr"] == 0.05
    assert train["trainer"] == {**TRAINER_DEFAULTS, "max_epochs": 2}


def test_a_recipe_saved_by_an_earlier_version_with_every_tasks_section_still_loads(tmp_path):
    """Saved recipes used to hold the sections of every task at their defaults (so a run could be resumed after
    an upgrade); those are dropped, while a section of another task with a value of its own is refused."""
    from distill.config import from_dict
    from distill.errors import RecipeError
    from tests.helpers import tiny_recipe

    old = tiny_recipe(tmp_path / "runs", tmp_path / "teachers")
    old |= {
        "align_distil": {"mode": "off_policy", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64},
        "speculative": {"depth": 4, "prompts": 8, "prompt_tokens": 32, "max_new_tokens": 64},
        "amu": {"views": 10},
    }
    loaded = from_dict(old, "saved")
    assert "speculative" not in loaded.resolved and loaded.recipe.task == "classification"
    old["speculative"]["depth"] = 5
    with pytest.raises(RecipeError, match="'speculative' is the section of task draft_distill"):
        from_dict(old, "saved")
