"""`distill compare`: every variant over several seeds, one table; variants are checked before anything trains."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.cli import main
from distill.config import load_recipe
from distill.engine.compare import load_comparison
from tests.helpers import tiny_recipe, write_recipe


def write_comparison(tmp_path, teacher_store, variants: dict) -> str:
    base = tiny_recipe(tmp_path / "runs", teacher_store)
    base.pop("description")
    base["loss"] = {"ce_weight": 1.0, "terms": {}}
    comparison = {"description": "tiny comparison", "seeds": [0, 1, 2], "base": base, "variants": variants}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(comparison, sort_keys=False))
    return str(path)


VARIANTS = {"ce": {}, "kd": {"loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}}}}


def test_compare_runs_each_variant_per_seed_and_prints_one_table(tmp_path, teacher_store, capsys):
    path = write_comparison(tmp_path, teacher_store, VARIANTS)
    assert main(["compare", "--recipe", path, "--seeds", "0,1", "trainer.max_epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "student acc" in out and "±" in out
    (summary,) = (tmp_path / "runs" / "compare").glob("version_0/summary.json")
    results = json.loads(summary.read_text())
    assert list(results) == ["ce", "kd"]
    for runs in results.values():
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0.0 <= r["test/agreement"] <= 1.0 for r in runs)
    # different seeds give different students; the same teacher serves every run
    assert results["ce"][0]["test/loss"] != results["ce"][1]["test/loss"]
    assert len({r["test/teacher_acc"] for runs in results.values() for r in runs}) == 1
    assert len(list(teacher_store.glob("*/teacher.pt"))) >= 1


def test_a_bad_variant_is_reported_before_anything_trains(tmp_path, teacher_store, capsys):
    path = write_comparison(tmp_path, teacher_store, {"ce": {}, "kd": {"loss": {"terms": {"kd": {"wieght": 1.0}}}}})
    assert main(["compare", "--recipe", path]) == 2
    err = capsys.readouterr().err
    assert "variant 'kd'" in err and "'loss.terms.kd.weight' is required" in err
    assert not (tmp_path / "runs").exists()


def test_fit_on_a_comparison_says_to_use_compare(tmp_path, teacher_store, capsys):
    path = write_comparison(tmp_path, teacher_store, VARIANTS)
    assert main(["fit", "--recipe", path]) == 2
    assert "run it with `distill compare --recipe compare`" in capsys.readouterr().err


def test_any_recipe_runs_over_seeds_with_mean_and_spread(tmp_path, teacher_store, capsys):
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs", teacher_store))
    budget = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    assert main(["compare", "--recipe", str(path), "--seeds", "0,1", *budget]) == 0
    out = capsys.readouterr().out
    assert "tiny: tiny test recipe" in out and "±" in out
    folder = tmp_path / "runs" / "tiny_seeds" / "version_0"  # apart from `distill fit`'s own runs/tiny
    results = json.loads((folder / "summary.json").read_text())
    assert list(results) == ["tiny"] and [r["seed"] for r in results["tiny"]] == [0, 1]
    assert results["tiny"][0]["test/loss"] != results["tiny"][1]["test/loss"]
    saved = yaml.safe_load((folder / "tiny" / "seed_1" / "version_0" / "recipe.yaml").read_text())
    assert saved["seed"] == 1 and saved["trainer"]["max_epochs"] == 1
    assert not (tmp_path / "runs" / "tiny").exists()


def test_a_base_names_a_recipe_and_a_variant_removes_a_term_with_null(tmp_path, teacher_store):
    write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs", teacher_store))
    variants = {"kd": {}, "ce": {"loss": {"ce_weight": 1.0, "terms": {"kd": None}}}}
    comparison = {"description": "by name", "seeds": [0, 1], "base": "../tiny.yaml", "variants": variants}
    (tmp_path / "sub").mkdir()
    path = write_recipe(tmp_path / "sub" / "compare.yaml", comparison)  # the base is looked for beside it first
    plan = load_comparison(str(path), ["optimizer.lr=0.5"])
    assert list(plan.variants["kd"].resolved["loss"]["terms"]) == ["kd"]
    assert plan.variants["ce"].resolved["loss"] == {"ce_weight": 1.0, "label_smoothing": 0.0, "terms": {}}
    assert {v.resolved["optimizer"]["lr"] for v in plan.variants.values()} == {0.5}  # overrides apply to the base

    bundled = write_recipe(tmp_path / "bundled.yaml", {**comparison, "base": "quickstart_digits"})
    assert load_comparison(str(bundled)).variants["kd"].resolved == load_recipe("quickstart_digits").resolved


@pytest.mark.parametrize(
    ("base", "variant", "expected"),
    [
        ("tiny.yaml", {"loss": {"terms": {"dkd": None}}}, "variant 'v': 'loss.terms.dkd: null': the recipe does not"),
        ("compare_losses_digits", {}, "'base' names "),
        ("quickstart_digit", {}, "did you mean 'quickstart_digits'"),
        (None, {}, "'base' is required"),
    ],
)
def test_a_bad_base_or_null_is_refused_before_anything_trains(tmp_path, teacher_store, capsys, base, variant, expected):
    write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tmp_path / "runs", teacher_store))
    comparison = {"base": base, "variants": {"v": variant}} if base else {"variants": {"v": variant}}
    path = write_recipe(tmp_path / "compare.yaml", comparison)
    assert main(["compare", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()
