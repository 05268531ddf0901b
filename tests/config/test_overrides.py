"""Command-line overrides: a mapping replaces, `~key` deletes, `key=null` deletes a named entry, dotted keys merge;
the same rules for `--print`, saved run recipes and comparison variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.cli import main
from distill.config.load import apply_overrides, load_recipe, save_recipe
from distill.errors import RecipeError
from tests.config.recipe_texts import KD, write

TEACHER_TRAINING = (
    "data: {name: digits}\nstudent: {name: convnet}\n"
    "teacher:\n  model: {name: convnet}\n  train:\n    trainer: {max_epochs: 30, accelerator: cpu}\n"
    "loss:\n  terms:\n    kd: {weight: 0.9, temperature: 4.0}\n"
)


def terms(path: Path, overrides: list[str]) -> dict:
    return load_recipe(str(path), overrides).resolved["loss"]["terms"]


def test_a_mapping_replaces_the_one_at_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, KD)
    assert list(terms(path, ["loss.terms={dkd: {weight: 1.0}}"])) == ["dkd"]  # was: KD and DKD side by side
    assert terms(path, ["loss.terms={}"]) == {}  # was: KD kept
    student = load_recipe(str(path), ["student={name: mlp}"]).resolved["student"]
    assert student["name"] == "mlp" and "widths" not in student  # nothing of the convnet's keys is left


def test_tilde_and_null_delete_a_named_entry(tmp_path: Path) -> None:
    path = write(tmp_path, KD)
    swapped = terms(path, ["~loss.terms.kd", "loss.terms.dkd.weight=1.0"])
    assert list(swapped) == ["dkd"] and swapped["dkd"]["beta"] == 8.0  # DKD's defaults filled in
    assert terms(path, ["loss.terms.kd=null"]) == {}  # was refused: 'loss.terms.kd' must be a mapping
    # deleted, a key takes its default; null stays a value where it is a legal one
    loaded = load_recipe(str(path), ["~loss.ce_weight", "teacher.checkpoint=null", "teacher.recipe=kd_cifar100"])
    assert loaded.resolved["loss"]["ce_weight"] == 1.0
    assert loaded.resolved["teacher"]["checkpoint"] is None
    # in order: deleted, then given again
    assert list(terms(path, ["~loss.terms", "loss.terms.kd.weight=0.5"])) == ["kd"]


def test_dotted_overrides_still_merge_into_the_recipe(tmp_path: Path) -> None:
    path = write(tmp_path, TEACHER_TRAINING)
    overrides = ["teacher.train.trainer.max_epochs=2", "loss.terms.kd.temperature=2", "data.batch_size=8"]
    resolved = load_recipe(str(path), overrides).resolved
    assert resolved["teacher"]["train"]["trainer"]["max_epochs"] == 2
    assert resolved["teacher"]["train"]["trainer"]["accelerator"] == "cpu"  # the rest of the mapping is kept
    assert resolved["loss"]["terms"]["kd"] == {"loss": "kd", "weight": 0.9, "temperature": 2.0, "standardize": False}
    assert resolved["data"]["name"] == "digits" and resolved["data"]["batch_size"] == 8


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("~no.such.key", "'~no.such.key': the recipe does not set 'no.such.key', so there is nothing to delete"),
        ("~loss.terms.kdd", "does not set 'loss.terms.kdd', so there is nothing to delete (did you mean 'kd'?)"),
        ("loss.terms.dkd=null", "does not set 'loss.terms.dkd', so there is nothing to delete"),
        ("~", "'~' names no key: write ~KEY to delete one"),
        ("~loss.terms.kd=1", "'~loss.terms.kd=1': a deletion takes no value; write ~loss.terms.kd"),
        ("optimizer=null", "'optimizer' must be a mapping, got None"),  # null where it is no legal value, no entry
    ],
)
def test_bad_deletions_are_one_line_naming_the_key(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(write(tmp_path, KD)), [override])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_print_shows_the_swapped_loss(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, KD)
    assert main(["fit", "--recipe", str(path), "--print", "~loss.terms.kd", "loss.terms.dkd={weight: 1.0}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed["loss"]["terms"]) == ["dkd"] and printed["loss"]["terms"]["dkd"]["alpha"] == 1.0


def test_a_saved_run_recipe_takes_the_same_overrides(tmp_path: Path) -> None:
    saved = tmp_path / "recipe.yaml"  # as a run folder keeps it: every default written out
    save_recipe(load_recipe(str(write(tmp_path, KD, "source.yaml"))).resolved, saved)
    assert list(terms(saved, ["~loss.terms.kd", "loss.terms.dkd.weight=1.0"])) == ["dkd"]
    stored = yaml.safe_load(saved.read_text())  # what `distill test --checkpoint` overrides: the stored dict
    changed = apply_overrides(stored, ["loss.terms.kd=null", "trainer.max_epochs=3"])
    assert changed["loss"]["terms"] == {} and changed["trainer"]["max_epochs"] == 3
    assert stored["loss"]["terms"]["kd"]["weight"] == 0.9  # the stored recipe itself is left as it was
