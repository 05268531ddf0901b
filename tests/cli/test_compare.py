"""`distill compare`: every variant over several seeds, one table; variants are checked before anything trains."""

from __future__ import annotations

import json

import yaml

from distill.cli import main
from tests.helpers import tiny_recipe


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
