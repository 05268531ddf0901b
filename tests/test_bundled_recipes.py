"""Every bundled recipe is parsed and its models are built without training (style item 7); the quickstart
also runs end to end on a tiny budget."""

from __future__ import annotations

import json

import pytest

from distill.cli import main
from distill.config import bundled_recipes, load_recipe
from distill.engine.compare import is_comparison, load_comparison
from distill.engine.wiring import create_data
from distill.models import create_model, model_for_data
from distill.tasks.causal_lm import token_probe
from distill.tasks.classification import image_probe
from distill.tasks.feature_terms import build_feature_terms, reads_features
from distill.tasks.loss_terms import LOSSES, build_terms

# Values a template recipe leaves as ??? for the user to give.
REQUIRED_BY_TEMPLATES = {
    "kd_imagefolder_timm": ["data.root=/data/my_images", "teacher.checkpoint=/ckpt/teacher.pth"],
    "llm_kd_qwen2.5_1.5b_to_0.5b": ["data.source=/data/pairs.jsonl"],
    "hidden_state_qwen2.5_1.5b_to_0.5b": ["data.source=/data/pairs.jsonl"],
    "llm_kd_llama3.1_8b_to_3.2_1b_8gpu": ["data.source=/data/pairs.jsonl"],
    "dpo_qwen2.5_0.5b": ["data.source=/data/pairs.jsonl"],
    "align_distil_qwen2.5_0.5b": ["data.source=/data/pairs.jsonl"],
    "specvlm_draft_llava1.5_7b": ["data.source=/data/image_text.jsonl"],
    "amu_imagenet_16shot": ["data.root=/data/imagenet", "data.class_names=/data/imagenet/classnames.txt"],
}


def test_recipes_are_discovered_from_the_folder():
    names = set(bundled_recipes())
    assert {"quickstart_digits", "student_alone_digits", "kd_imagefolder_timm", "llm_kd_tiny", "gld_tiny"} <= names


@pytest.mark.parametrize("name", sorted(bundled_recipes()))
def test_bundled_recipe_is_valid_and_documented(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # tokenizers trained offline are cached under the working folder
    path = bundled_recipes()[name]
    first_line = path.read_text().splitlines()[0]
    if is_comparison(path):
        assert first_line.startswith(f"# distill compare --recipe {name}"), "first line: the command that runs it"
        plan = load_comparison(name)
        assert plan.description and len(plan.seeds) >= 2
        for loaded in plan.variants.values():
            check_builds(loaded.recipe, monkeypatch)
        return
    assert first_line.startswith(f"# distill fit --recipe {name}"), "first line: the command that runs it"
    loaded = load_recipe(name, REQUIRED_BY_TEMPLATES.get(name, []))
    assert loaded.recipe.description, "a one-line description for `distill recipes`"
    logger = loaded.recipe.logger  # W&B and MLflow need the loggers extra: a bundled recipe shows them commented out
    assert logger.wandb is None and logger.mlflow is None, "runs with the core install: the CSV log by default"
    for frozen in (loaded.recipe.teacher, loaded.recipe.second_teacher):  # one key for a frozen model's precision
        assert frozen is None or "dtype" not in frozen.model, "hold a frozen model's precision in <section>.dtype"
    check_builds(loaded.recipe, monkeypatch)


def check_builds(recipe, monkeypatch) -> None:
    """Build what can be built offline without data files or weights: the models, sized by the dataset.

    Hugging Face models and tokenizers (`hf:`) and pretrained open_clip or timm weights need the Hub, so recipes
    naming them are only parsed. The AMU head is built by its task from few-shot features, not here.
    """
    frozen = [t.model for t in (recipe.teacher, recipe.second_teacher) if t is not None]
    models = [recipe.student["name"], *(m["name"] for m in frozen)]
    data_files = [str(recipe.data.get(key, "")) for key in ("tokenizer", "processor")]
    if any(name.startswith("hf:") for name in models + data_files) or any(m.get("pretrained") for m in frozen):
        return
    if recipe.data["name"] == "imagefolder":
        monkeypatch.setattr("distill.data.imagefolder.ImageFolderDataModule.__init__", fake_imagefolder_init)
    data = create_data(recipe.data)
    teacher = model_for_data(recipe.teacher.model, data, "teacher") if recipe.teacher is not None else None
    if recipe.task == "draft_distill":  # the draft is sized from its target
        args = {k: v for k, v in recipe.student.items() if k != "name"}
        create_model(recipe.student["name"], target=teacher, **args)
    elif recipe.task != "amu":
        student = model_for_data(recipe.student, data, "student")
    if recipe.second_teacher is not None:
        model_for_data(recipe.second_teacher.model, data, "second_teacher")
    features = {k: t for k, t in recipe.loss.terms.items() if reads_features(LOSSES.get(t["loss"]))}
    build_terms({k: t for k, t in recipe.loss.terms.items() if k not in features})
    if features:  # the layers exist and their shapes pair up, on the recipe's real models
        probe = token_probe if recipe.task == "causal_lm" else image_probe(data)
        built = build_feature_terms(features, LOSSES.get, student, teacher, probe, num_samples=1000)
        assert built.keys() == features.keys()


def fake_imagefolder_init(self, **kwargs):
    self.num_classes, self.in_chans, self.image_size = 1000, 3, kwargs.get("image_size", 224)


def test_template_without_its_required_values_names_them(capsys):
    assert main(["fit", "--recipe", "kd_imagefolder_timm", "--print"]) == 2
    assert "'data.root' must be set" in capsys.readouterr().err


def test_quickstart_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    overrides = [
        f"run.root={tmp_path}/runs",
        f"teacher.store={tmp_path}/teachers",
        "teacher.train.trainer.max_epochs=1",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    assert main(["fit", "--recipe", "quickstart_digits", *overrides]) == 0
    assert "student accuracy" in capsys.readouterr().out
    (results,) = (tmp_path / "runs").glob("quickstart_digits/version_0/results.json")
    assert set(json.loads(results.read_text())["test"]) >= {"test/acc", "test/teacher_acc", "test/agreement"}


CHAT_RECIPES = [name for name, path in bundled_recipes().items() if "source: python_stdlib_chat" in path.read_text()]


@pytest.mark.parametrize("name", CHAT_RECIPES)
def test_the_offline_chat_recipes_train_every_answer_whole(name):
    """A conversation cut inside its answer never shows the student the end of turn, so a student trained on it does
    not learn to stop (and a sampled answer never ends): every conversation of the bundled chat data fits its row,
    and the sampling budget holds a whole answer."""
    from distill.engine.wiring import prepare_data

    loaded = load_recipe(name)
    data = prepare_data(loaded)
    for split, report in data.statistics.items():
        assert report["dropped"] == 0 and report["rows"] == report["documents"], (split, report)
        assert set(report["truncated"]["student"].values()) == {0}, (split, report)
    if loaded.settings.mode != "off_policy":  # trained tokens per row: the answer and its end of turn
        longest = int(data.train_set.tensors["labels"].ne(-100).sum(1).max())
        assert loaded.settings.sampling.max_new_tokens >= longest, (loaded.settings.sampling, longest)
