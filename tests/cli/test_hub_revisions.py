"""Runs record the Hub commit of every `hf:` model they read, evaluation reads the same commits after the branch has
moved on, and the language-model teacher cache is keyed by the teacher's commit (or its local folder's contents).

The Hub is stood in for by a local Hugging Face cache in its real layout (`models--org--name/refs/main` naming a
commit, `snapshots/<commit>/` holding `save_pretrained` files), read offline, as on a machine that downloaded the
models once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main
from distill.config import load_recipe, locate
from distill.data.hub import hub_commit, hub_origin, split_revision
from distill.errors import DistillError
from distill.models.causal_lm import llama
from distill.teachers.cache_setup import teacher_key
from distill.teachers.resolve import plan_frozen
from tests.helpers import check_evaluation

SIZES = {
    "student": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1),
    "teacher": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2),
}
BUDGET = [
    "data.max_documents=40",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def publish(hub: Path, repo: str, commit: str, seed: int) -> None:
    """A new commit of `someone/<repo>` in the local Hub cache, made the head of main."""
    folder = hub / f"models--someone--{repo}"
    torch.manual_seed(seed)
    model = llama(vocab_size=259, num_attention_heads=2, num_key_value_heads=2, **SIZES[repo])
    model.save_pretrained(folder / "snapshots" / commit)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for repo in ("student", "teacher"):
        publish(root, repo, "a" * 40, seed=0)
    return root


def hub_recipe(tmp_path: Path, *, cache: bool = False) -> Path:
    recipe = yaml.safe_load(locate("llm_kd_tiny").read_text())
    recipe["student"] = {"name": "hf:someone/student"}
    recipe["teacher"] = {"model": {"name": "hf:someone/teacher"}}
    if cache:
        recipe["teacher"]["cache"] = str(tmp_path / "teacher_cache")
    recipe["run"] = {"root": str(tmp_path / "runs"), "name": "hub"}
    path = tmp_path / "hub_kd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_names_revisions_and_commits():
    assert split_revision("Qwen/Qwen2.5-0.5B@v1.0") == ("Qwen/Qwen2.5-0.5B", "v1.0")
    assert split_revision("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert split_revision("./models/a@b") == ("./models/a@b", None)  # a local folder keeps its name
    assert hub_commit("any/repo", "c" * 40) == "c" * 40  # a commit is its own answer, asked of no one
    assert hub_origin(".") == {"folder": str(Path(".").resolve())}


def test_commits_resolve_from_the_local_hub_cache(hub):
    assert hub_commit("someone/student") == "a" * 40
    publish(hub, "student", "b" * 40, seed=1)
    assert hub_commit("someone/student") == "b" * 40  # main has moved
    assert hub_commit("someone/unknown") is None  # not cached and offline: not known, never guessed
    assert hub_origin("someone/student@main") == {
        "repo": "someone/student",
        "type": "model",
        "revision": "main",
        "commit": "b" * 40,
    }


def test_a_run_records_and_evaluation_pins_the_commits_it_read(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", str(hub_recipe(tmp_path)), *BUDGET]) == 0
    run = tmp_path / "runs" / "hub" / "version_0"
    sources = json.loads((run / "sources.json").read_text())
    assert sources["student"]["hub"]["commit"] == "a" * 40
    assert sources["teacher"]["hub"] == {
        "repo": "someone/teacher",
        "type": "model",
        "revision": "main",
        "commit": "a" * 40,
    }
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    assert checkpoint["distill"]["sources"] == sources  # the file says what the checkpoints record
    # main moves on for both models: evaluation still reads the commits the run read (the teacher-side numbers of
    # the test table equal the run's own only if the teacher is the same)
    for repo in ("student", "teacher"):
        publish(hub, repo, "b" * 40, seed=7)
    check_evaluation(run, capsys)


def test_the_teacher_cache_key_follows_the_commit_and_the_folder_contents(hub, tmp_path):
    def key(recipe: Path) -> dict:
        loaded = load_recipe(str(recipe), BUDGET)
        return teacher_key(loaded.recipe, plan_frozen(loaded, "teacher", "causal_lm").source)

    recipe = hub_recipe(tmp_path, cache=True)
    first = key(recipe)
    assert first["weights_sha256"] == f"someone/teacher@{'a' * 40}"
    publish(hub, "teacher", "b" * 40, seed=1)
    assert key(recipe)["weights_sha256"] == f"someone/teacher@{'b' * 40}"
    # the same commit asked for by name: the same key (the revision asked for is not part of it)
    raw = yaml.safe_load(recipe.read_text())
    raw["teacher"]["model"]["revision"] = "b" * 40
    recipe.write_text(yaml.safe_dump(raw))
    assert key(recipe) == {**first, "weights_sha256": f"someone/teacher@{'b' * 40}"}
    # a local folder: keyed by what is in it, so a model rewritten in place keys another cache
    folder = tmp_path / "local_teacher"
    llama(vocab_size=259, num_attention_heads=2, num_key_value_heads=2, **SIZES["teacher"]).save_pretrained(folder)
    raw["teacher"]["model"] = {"name": f"hf:{folder}"}
    recipe.write_text(yaml.safe_dump(raw))
    before = key(recipe)["weights_sha256"]
    torch.manual_seed(3)
    llama(vocab_size=259, num_attention_heads=2, num_key_value_heads=2, **SIZES["teacher"]).save_pretrained(folder)
    assert key(recipe)["weights_sha256"] != before
    assert len(before) == 64  # a sha256, not the folder's name


def test_a_revision_is_a_recipe_key_of_hub_models(hub, tmp_path):
    loaded = load_recipe(str(hub_recipe(tmp_path)), [*BUDGET, "student.revision=" + "a" * 40])
    assert loaded.resolved["student"]["revision"] == "a" * 40
    publish(hub, "student", "b" * 40, seed=1)
    from distill.models import create_model

    pinned = create_model("hf:someone/student", revision="a" * 40)
    head = create_model("hf:someone/student")
    assert not torch.equal(pinned.lm_head.weight, head.lm_head.weight)
    with pytest.raises(DistillError, match="hf:someone/student: cannot load it"):
        create_model("hf:someone/student", revision="no-such-branch")


def test_datasets_and_tokenizers_are_recorded_and_pinned_in_every_form_a_recipe_writes(hub):
    from distill.engine.run_folder import pin_hub_commits
    from distill.tasks.context import hub_sources

    folder = hub / "datasets--someone--chats"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("d" * 40)
    (folder / "refs" / "v2").write_text("e" * 40)
    tokenizer = hub / "models--someone--tok"
    (tokenizer / "refs").mkdir(parents=True)
    (tokenizer / "refs" / "main").write_text("f" * 40)

    class Recipe:  # the two sections hub_sources reads
        student = {"name": "llama"}
        data = {
            "source": {"path": "hf:someone/chats", "split": "train", "revision": "v2"},
            "validation": "hf:someone/chats",
            "tokenizer": "hf:someone/tok",
        }

    sources = hub_sources(Recipe())
    assert {k: v["hub"]["commit"] for k, v in sources.items()} == {
        "data.source": "e" * 40,
        "data.validation": "d" * 40,
        "data.tokenizer": "f" * 40,
    }
    assert sources["data.source"]["hub"]["type"] == "dataset"
    pinned = pin_hub_commits({"data": dict(Recipe.data)}, sources)["data"]
    assert pinned["source"] == {"path": "hf:someone/chats", "split": "train", "revision": "e" * 40}
    assert pinned["validation"] == {"path": "hf:someone/chats", "revision": "d" * 40}
    assert pinned["tokenizer"] == f"hf:someone/tok@{'f' * 40}"
    # a source named by its path takes the flat data.revision, as the recipe wrote it
    flat = pin_hub_commits({"data": {"source": "hf:someone/chats"}}, {"data.source": sources["data.validation"]})
    assert flat["data"] == {"source": "hf:someone/chats", "revision": "d" * 40}
