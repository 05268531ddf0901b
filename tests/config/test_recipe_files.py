"""Recipe files: YAML syntax and safety, interpolation, command-line overrides, round trip, bundled names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.config.load import bundled_recipes, from_dict, load_recipe, locate, save_recipe
from distill.errors import DistillError, RecipeError
from tests.config.recipe_texts import BASE, KD, TEACHER, load_error, write  # noqa: F401

# ---------------------------------------------------------------- YAML


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "seed: 1: 2\n")  # line 3; the second ':' is column 8
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path))
    assert str(info.value).startswith(f"{path}:3:8: YAML syntax error")


def test_recipe_must_be_a_mapping(tmp_path: Path) -> None:
    assert "a recipe must be a mapping" in load_error(tmp_path, "- data\n- student\n")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    assert "duplicate key" in load_error(tmp_path, BASE + "seed: 1\nseed: 2\n")


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
        "!!python/object:argparse.Namespace {{x: 1}}",
    ],
)
def test_python_yaml_tags_are_refused_without_running_anything(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "executed"
    path = write(tmp_path, BASE + "description: " + tag.format(marker=marker) + "\n")
    with pytest.raises(DistillError):
        load_recipe(str(path))
    assert not marker.exists()


def test_interpolation_resolves(tmp_path: Path) -> None:
    text = BASE + "seed: 7\nrun: {name: 'kd_seed${seed}'}\noptimizer: {lr: 0.2}\ndescription: 'lr ${optimizer.lr}'\n"
    path = write(tmp_path, text)
    resolved = load_recipe(str(path)).resolved
    assert resolved["run"]["name"] == "kd_seed7"
    assert resolved["description"] == "lr 0.2"
    # an override of the referenced key flows into the interpolation
    assert load_recipe(str(path), ["seed=3"]).resolved["run"]["name"] == "kd_seed3"


def test_unbalanced_interpolation_is_a_recipe_error_naming_the_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "description: 'costs ${ a lot'\n")
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}: 'description'")


def test_interpolation_of_a_missing_key_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "run: {name: '${nope}'}\n")
    assert message.startswith(str(tmp_path / "recipe.yaml"))
    assert "nope" in message


# ---------------------------------------------------------------- command-line overrides


def test_overrides_are_applied_and_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path, KD)
    loaded = load_recipe(str(path), ["trainer.max_epochs=3", "loss.terms.kd.temperature=2.5", "optimizer.name=adamw"])
    assert loaded.resolved["trainer"]["max_epochs"] == 3
    expected = {"loss": "kd", "weight": 0.9, "temperature": 2.5, "standardize": False}
    assert loaded.resolved["loss"]["terms"]["kd"] == expected
    assert loaded.recipe.optimizer.name == "adamw"
    assert loaded.path == path
    assert load_recipe(str(path)).resolved["trainer"]["max_epochs"] == 10  # the file is unchanged


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epochs=ten", "'trainer.max_epochs' must be an integer, got 'ten'"),
        ("optimizer.lr=fast", "'optimizer.lr' must be a number, got 'fast'"),
        ("optimiser.lr=0.1", "unknown key 'optimiser' (did you mean 'optimizer'?)"),
        ("trainer.max_epoch=3", "unknown key 'trainer.max_epoch' (did you mean 'max_epochs'?)"),
        ("loss.terms.kd.temperature=-1", "'loss.terms.kd' is invalid: temperature must be > 0"),
        ("trainer.callbacks=[]", "'trainer.callbacks' cannot be set in a recipe"),
    ],
)
def test_errors_from_overrides_say_they_came_from_the_command_line(tmp_path: Path, override: str, expected: str):
    message = load_error(tmp_path, KD, [override])
    assert "command-line overrides" in message
    assert expected in message


@pytest.mark.parametrize("override", ["key", "=3", "trainer.max_epochs"])
def test_override_without_equals_is_an_error(tmp_path: Path, override: str) -> None:
    message = load_error(tmp_path, KD, [override])
    assert message == f"command line: override '{override}' is not of the form key=value"


def test_file_errors_are_reported_against_the_file_even_with_overrides(tmp_path: Path) -> None:
    message = load_error(tmp_path, BASE + "optimiser: {lr: 0.1}\n", ["seed=1"])
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}: unknown key 'optimiser'")
    assert "command" not in message


# ---------------------------------------------------------------- from_dict, round trip, bundled recipes


def test_from_dict_names_its_source() -> None:
    loaded = from_dict({"data": {"name": "digits"}, "student": {"name": "mlp"}}, "my-source")
    assert loaded.path is None
    assert loaded.resolved["student"] == {"name": "mlp", "in_features": 64, "hidden": [64]}
    with pytest.raises(RecipeError, match=r"^my-source: unknown key 'studnet' \(did you mean 'student'\?\)"):
        from_dict({"data": {"name": "digits"}, "studnet": {"name": "mlp"}}, "my-source")


@pytest.mark.parametrize(
    "text",
    [
        BASE,
        KD + "seed: 3\nrun: {name: 'x${seed}'}\n",
        BASE + "description: 'literal \\${seed} and \\${ a lone brace'\n",  # escaped: not interpolations
        BASE + "description: 'C:\\\\path\\ ends with \\\\'\n",
    ],
    ids=["minimal", "kd", "literal-interpolation", "backslashes"],
)
def test_saved_resolved_recipe_loads_to_the_same_resolved_dict(tmp_path: Path, text: str) -> None:
    first = load_recipe(str(write(tmp_path, text))).resolved
    saved = tmp_path / "saved.yaml"
    save_recipe(first, saved)
    assert load_recipe(str(saved)).resolved == first


def test_bundled_recipe_round_trip(tmp_path: Path) -> None:
    first = load_recipe("quickstart_digits").resolved
    save_recipe(first, tmp_path / "saved.yaml")
    assert load_recipe(str(tmp_path / "saved.yaml")).resolved == first


def test_literal_interpolation_text_survives_the_round_trip(tmp_path: Path) -> None:
    first = load_recipe(str(write(tmp_path, BASE + "description: 'cost \\${seed}'\n"))).resolved
    assert first["description"] == "cost ${seed}"
    save_recipe(first, tmp_path / "saved.yaml")
    assert load_recipe(str(tmp_path / "saved.yaml")).resolved["description"] == "cost ${seed}"


@pytest.mark.parametrize("name", ["quickstart_digits", "quickstart_digits.yaml"])
def test_bare_bundled_name_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert locate(name) == bundled_recipes()["quickstart_digits"]
    loaded = load_recipe(name)
    assert loaded.name == "quickstart_digits"
    assert loaded.resolved["data"]["name"] == "digits"
    assert loaded.resolved["loss"]["terms"]["kd"]["temperature"] == 4.0


def test_an_existing_file_wins_over_a_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, BASE + "seed: 42\n", name="quickstart_digits.yaml")
    assert locate("quickstart_digits.yaml") == Path("quickstart_digits.yaml")
    assert load_recipe("quickstart_digits.yaml").resolved["seed"] == 42


@pytest.mark.parametrize("name", ["quickstart_digts", "quickstart-digits.yaml"])
def test_misspelt_bundled_name_suggests_the_closest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistillError, match=re.escape("(did you mean 'quickstart_digits'?)")) as info:
        load_recipe(name)
    assert "is neither a file nor a bundled recipe" in str(info.value)


@pytest.mark.parametrize(
    "description",
    ["cost ${seed}", "a\\${seed}", "a\\\\${x} and ${y", "x\\y $ {", "\\", "${", "$${seed}}"],
)
def test_any_description_text_survives_save_and_load(tmp_path: Path, description: str) -> None:
    first = from_dict({"data": {"name": "digits"}, "student": {"name": "mlp"}, "description": description}, "test")
    save_recipe(first.resolved, tmp_path / "saved.yaml")
    assert load_recipe(str(tmp_path / "saved.yaml")).resolved == first.resolved
