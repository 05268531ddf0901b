"""Where the teacher comes from: a checkpoint, or a teacher trained once, kept in a store keyed by its settings.
Resolution plans (distill.teachers); the engine trains what the plan says is missing (distill.engine.pipeline)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import distill.engine.pipeline as pipeline
from distill.config import LoadedRecipe, from_dict, load_recipe
from distill.config.load import save_recipe
from distill.engine.wiring import prepare_data
from distill.errors import DistillError
from distill.models import create_model
from distill.models.weights import read_checkpoint
from distill.teachers.resolve import plan_frozen
from distill.teachers.store import TEACHER_FILE, store_path, teacher_run
from tests.helpers import tiny_recipe


def stored_teacher_path(loaded: LoadedRecipe) -> Path:
    return plan_frozen(loaded, "teacher", "classification").weights


def teacher_key(loaded: LoadedRecipe) -> str:
    return stored_teacher_path(loaded).parent.name.rsplit("-", 1)[1]


def resolve_teacher(loaded: LoadedRecipe, data) -> tuple[torch.nn.Module | None, dict | None]:
    frozen = pipeline.provide_frozen(loaded, data).get("teacher")
    return (frozen.model, frozen.source) if frozen is not None else (None, None)


def load(raw: dict) -> LoadedRecipe:
    return from_dict(raw, "test")


def changed(raw: dict, dotted: str, value: object) -> dict:
    """A deep copy of `raw` with the key at `dotted` (e.g. 'teacher.train.seed') set to `value`."""
    raw = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    section = raw
    for key in parents:
        section = section[key]
    section[last] = value
    return raw


@pytest.fixture
def raw(tmp_path: Path) -> dict:
    return tiny_recipe(tmp_path / "runs", tmp_path / "teachers")


def same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in own)


# teacher_key


def test_key_is_stable(raw: dict) -> None:
    assert teacher_key(load(raw)) == teacher_key(load(copy.deepcopy(raw)))


def test_key_does_not_depend_on_how_a_default_is_written(raw: dict) -> None:
    explicit = changed(raw, "teacher.model.dropout", 0.0)  # ConvNet's default
    assert teacher_key(load(explicit)) == teacher_key(load(raw))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("teacher.model.widths", [8, 32]),
        ("teacher.model", {"name": "mlp"}),
        ("teacher.train.seed", 1),
        ("teacher.train.optimizer.lr", 0.02),
        ("teacher.train.trainer.max_epochs", 4),
        ("data.split_seed", 1),
        ("data.batch_size", 16),
        ("data.augment", True),
    ],
)
def test_key_changes_with_what_the_teacher_learns(raw: dict, dotted: str, value: object) -> None:
    raw_changed = changed(raw, dotted, value)
    assert load(raw_changed).resolved != load(raw).resolved  # the change is real
    assert teacher_key(load(raw_changed)) != teacher_key(load(raw))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("data.num_workers", 2),
        ("student", {"name": "mlp", "hidden": [32]}),
        ("loss", {"ce_weight": 0.5, "terms": {"kd": {"weight": 0.5, "temperature": 2.0}}}),
        ("optimizer", {"name": "sgd", "lr": 0.1}),
        ("scheduler", {"name": "constant"}),
        ("trainer.max_epochs", 7),
        ("seed", 3),  # the teacher run has its own seed (teacher.train.seed)
        ("run.name", "other"),
        ("teacher.store", "elsewhere"),
    ],
)
def test_key_ignores_what_the_teacher_does_not_depend_on(raw: dict, dotted: str, value: object) -> None:
    raw_changed = changed(raw, dotted, value)
    assert load(raw_changed).resolved != load(raw).resolved  # the change is real
    assert teacher_key(load(raw_changed)) == teacher_key(load(raw))


def test_stored_teacher_path_is_in_the_store(raw: dict, tmp_path: Path) -> None:
    loaded = load(raw)
    path = stored_teacher_path(loaded)
    store = (tmp_path / "teachers").resolve()
    assert path.is_absolute() and path.is_relative_to(store)
    assert path.name == TEACHER_FILE
    assert teacher_key(loaded) in path.parent.name
    other = stored_teacher_path(load(changed(raw, "data.split_seed", 1)))
    assert other.parent != path.parent and other.is_relative_to(store)


def test_library_model_names_make_one_folder(raw: dict) -> None:
    raw = changed(raw, "teacher.model", {"name": "timm:test_resnet"})
    path = stored_teacher_path(load(raw))
    assert path.parent.parent == Path(raw["teacher"]["store"]).resolve()
    assert ":" not in path.parent.name


# resolve_teacher


def test_no_teacher(tmp_path: Path) -> None:
    raw = tiny_recipe(tmp_path / "runs", tmp_path / "teachers", teacher=None, loss={"ce_weight": 1.0})
    loaded = load(raw)
    assert resolve_teacher(loaded, prepare_data(loaded)) == (None, None)


def test_teacher_from_a_checkpoint(raw: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(7)
    spec = raw["teacher"]["model"]
    weights = create_model("convnet", 10, 1, widths=spec["widths"], hidden=spec["hidden"]).state_dict()
    torch.save({"model": weights, "epoch": 240}, tmp_path / "teacher_w.pt")
    monkeypatch.chdir(tmp_path)  # a relative path is resolved once, so the source works from anywhere
    monkeypatch.setattr(pipeline, "train_frozen", lambda *a: pytest.fail("a teacher with a checkpoint is trained"))
    raw["teacher"] = {"model": spec, "checkpoint": "teacher_w.pt"}
    loaded = load(raw)
    model, source = resolve_teacher(loaded, prepare_data(loaded))
    assert same_weights(model, weights)
    assert source["weights"] == str((tmp_path / "teacher_w.pt").resolve())
    assert source["model"] == loaded.resolved["teacher"]["model"]


def test_teacher_is_trained_once_then_reused(raw: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = changed(raw, "teacher.train.trainer.max_epochs", 1)  # enough to learn something; half the time
    loaded = load(raw)
    data = prepare_data(loaded)
    path = stored_teacher_path(loaded)
    assert not path.exists()

    model, source = resolve_teacher(loaded, data)
    assert path.is_file() and source["weights"] == str(path)
    saved = read_checkpoint(path)
    assert same_weights(model, saved["model"])
    meta = saved["distill"]
    assert meta["recipe"]["student"] == loaded.resolved["teacher"]["model"]  # the teacher run trained the teacher
    assert meta["recipe"]["data"] == loaded.resolved["data"]
    assert meta["recipe"]["loss"]["terms"] == {}  # labels only
    assert meta["metrics"]["test/acc"] > 0.3  # it learned (chance is 0.1)

    def no_training(*args: object) -> None:
        raise AssertionError("the stored teacher was trained again")

    monkeypatch.setattr(pipeline, "train_frozen", no_training)
    stamp = path.stat().st_mtime_ns
    again, source_again = resolve_teacher(load(copy.deepcopy(raw)), data)
    assert source_again == source and path.stat().st_mtime_ns == stamp
    assert same_weights(again, saved["model"])


def test_teacher_key_ignores_display_settings_of_the_teacher_run(tmp_path):
    base = tiny_recipe(tmp_path / "runs", tmp_path / "teachers")
    quiet = tiny_recipe(tmp_path / "runs", tmp_path / "teachers")
    quiet["teacher"]["train"]["trainer"].update(enable_progress_bar=True, log_every_n_steps=1)
    assert teacher_key(from_dict(base, "test")) == teacher_key(from_dict(quiet, "test"))


def test_teacher_can_train_on_other_data_settings_than_the_student(tmp_path):
    """`teacher.train.data` (e.g. every label) is what the teacher sees; the student's subset does not matter."""
    full = tiny_recipe(tmp_path / "runs", tmp_path / "teachers")
    subset = copy.deepcopy(full)
    subset["data"]["train_samples"] = 50
    subset["teacher"]["train"]["data"] = {"train_samples": None}
    assert teacher_key(from_dict(full, "test")) == teacher_key(from_dict(subset, "test"))
    run = teacher_run(from_dict(subset, "test"), "teacher", "classification")
    assert run.recipe.data["train_samples"] is None
    bad = copy.deepcopy(subset)
    bad["teacher"]["train"]["data"] = {"train_sample": None}
    with pytest.raises(Exception, match="unknown key 'teacher.train.data.train_sample'"):
        from_dict(bad, "test")


def test_recipe_teachers_are_keyed_by_their_settings_not_by_sections_left_at_defaults():
    """A teacher run by its own recipe (`teacher.recipe`) is stored under a key of that run's settings; sections at
    their schema defaults are left out, so a section added to the schema later keeps stored teachers reusable."""

    def key(overrides: list[str]) -> str:
        run = load_recipe("dpo_tiny", overrides)
        return store_path("runs/teachers", run.name, run.resolved).parent.name

    plain_key = key([])
    assert plain_key.startswith("dpo_tiny-") and key([]) == plain_key
    assert key(["data.swap=true"]) != plain_key and key(["optimizer.lr=0.001"]) != plain_key
    assert key(["fsdp.frozen=auto", "speed.channels_last=false"]) == plain_key  # written out at their defaults
    assert key(["fsdp.frozen=shard"]) != plain_key and key(["run.name=elsewhere"]) == plain_key
    assert key(["data.num_workers=2", "trainer.enable_progress_bar=false"]) == plain_key  # speed and display


def test_one_key_for_a_teacher_run_written_as_train_settings_or_as_a_recipe(raw: dict, tmp_path: Path) -> None:
    """The store key is one function of the teacher run's recipe: the run made from `teacher.train`, written to a
    file and named by `teacher.recipe`, is stored under the same key (the folder's label differs)."""
    loaded = load(raw)
    from_train = plan_frozen(loaded, "teacher", "classification")
    save_recipe(from_train.run.resolved, tmp_path / "my_teacher.yaml")
    as_recipe = changed(raw, "teacher", {**raw["teacher"], "train": None, "recipe": str(tmp_path / "my_teacher.yaml")})
    from_recipe = plan_frozen(load(as_recipe), "teacher", "classification")
    assert from_train.weights.parent.name == f"convnet-{teacher_key(loaded)}"
    assert from_recipe.weights.parent.name == f"my_teacher-{teacher_key(loaded)}"


def test_a_missing_teacher_is_a_plan_to_train_it_not_a_training(raw: dict) -> None:
    plan = plan_frozen(load(raw), "teacher", "classification")
    assert plan.needs_training and not plan.weights.exists()
    assert plan.run.recipe.student == load(raw).recipe.teacher.model  # the teacher run trains the teacher's model
    assert plan.run.recipe.loss.terms == {} and plan.run.recipe.teacher is None  # on labels alone
    assert not plan.weights.parent.exists()  # planning wrote nothing


def test_the_lora_recipe_plans_its_teacher_without_bitsandbytes_and_int8_stays_an_option(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed: no extra brings it by default
    plan = plan_frozen(load_recipe("chat_kd_qwen2.5_1.5b_to_0.5b_lora"), "teacher", "causal_lm")
    assert plan.dtype == "bfloat16" and plan.weights is None  # the Hub teacher, held in bf16
    int8 = load_recipe("chat_kd_qwen2.5_1.5b_to_0.5b_lora", ["teacher.dtype=int8"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the GPU check, to the missing library
    with pytest.raises(DistillError, match=r"^teacher.dtype: int8 needs the bitsandbytes library: .*distill\[bnb\]"):
        plan_frozen(int8, "teacher", "causal_lm")
