"""Draft distillation through the elastic visual compressor: each draft position is aligned with its own target
position per row, `pool` gives the values `visual_pool` always gave, and recipes of every variant run end to end
with lossless decoding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from distill.cli import main
from distill.config import from_dict
from distill.data import create_datamodule
from distill.engine.pipeline import fit
from distill.models import create_model
from distill.models.draft import EagleDraft
from distill.models.visual_pool import pool_visual
from distill.tasks.draft_distill import DraftDistillTask, at
from losses import DraftDistillLoss
from tests.helpers import FAST_TRAINER
from tests.tasks.test_draft_distill_task import logged

ALL = ["pool", "prune", "conv", "resampler", "text_only"]


@pytest.fixture(scope="module")
def vlm():
    """A batch of caption rows (bos, 16 image tokens, caption, padding) and a tiny LLaVA-style target for them."""
    data = create_datamodule("captions", num_images=8, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    return batch, create_model("llava_tiny", **data.model_args("teacher")).eval()


def module_for(target, seed: int = 1, logits: str = "auto", **draft) -> DraftDistillTask:
    torch.manual_seed(seed)
    draft_model = EagleDraft.for_target(target, **draft)
    return DraftDistillTask(draft_model, target, DraftDistillLoss(), prompts=0, logits=logits, chunk_size=7)


def visual_pool_step(module: DraftDistillTask, batch: dict, factor: int) -> dict[str, torch.Tensor]:
    """The step as `visual_pool` made it before the compressor: image positions, the same in every row, pooled
    with `pool_visual`, each pooled position compared with the target after its last original position."""
    ids, labels = batch["input_ids"], batch["labels"]
    with torch.no_grad():
        out = module.teacher(
            input_ids=ids,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            output_hidden_states=True,
        )
    features, embeddings = out.hidden_states[-1], out.hidden_states[0]
    image = ids[0, :-1] == module.student.image_token_id
    (inputs, next_embeddings), kept = pool_visual((features[:, :-1], embeddings[:, 1:]), image, factor)
    aligned = kept + 1
    predicted = module.student(inputs, next_embeddings)
    head, mask = module.teacher.get_output_embeddings(), labels[:, aligned] != -100
    if module.chunked:
        ce, feature, _ = module.objective.parts_from_head(predicted, features[:, aligned], head, mask, 7)
    else:
        draft_logits, target_logits = head(predicted), out.logits[:, aligned]
        ce, feature = module.objective.parts(draft_logits, target_logits, predicted, features[:, aligned], mask)
    return {"loss": module.objective.combine(ce, feature), "ce": ce, "feature": feature}


def gradients(module: DraftDistillTask, loss: torch.Tensor) -> list[torch.Tensor]:
    module.student.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in module.student.parameters() if p.grad is not None]


@pytest.mark.parametrize("logits", ["full", "chunked"])
@pytest.mark.parametrize(
    "draft",
    [{"visual_pool": 4}, {"compressor": {"mode": "fixed", "primitives": ["pool"], "factor": 4}}],
    ids=["visual_pool", "compressor"],
)
def test_the_pool_compressor_gives_the_step_visual_pool_gave(vlm, draft, logits):
    batch, target = vlm
    module = module_for(target, logits=logits, **draft)
    assert module.chunked == (logits == "chunked")
    reference = visual_pool_step(module, batch, 4)
    values = module.step(batch)
    for name in ("loss", "ce", "feature"):
        assert torch.equal(values[name], reference[name]), name
    expected = gradients(module, reference["loss"])
    assert all(torch.equal(a, b) for a, b in zip(gradients(module, values["loss"]), expected, strict=True))


def force(module: DraftDistillTask, choice: list[int]) -> None:
    chosen = torch.tensor(choice)
    module.student.compressor.gate.choose = lambda logits: (chosen, torch.ones(len(chosen)))


def test_a_gate_batch_whose_rows_all_choose_pool_gives_the_pool_step(vlm):
    batch, target = vlm
    module = module_for(target, compressor={"mode": "gate", "primitives": ["pool", "conv"], "factor": 4})
    force(module, [0, 0, 0, 0])
    reference = visual_pool_step(module, batch, 4)
    values = module.step(batch)
    assert all(torch.equal(values[name], reference[name]) for name in ("loss", "ce", "feature"))


def test_rows_that_choose_differently_are_each_aligned_with_their_own_targets(vlm):
    """The batch's loss parts are the token-weighted mean of each row's parts computed alone (mask sum + 1e-5 in
    each denominator): every row is padded, masked and aligned as if it were alone."""
    batch, target = vlm
    module = module_for(target, compressor={"mode": "gate", "primitives": ALL, "keep": 3, "queries": 2})
    force(module, [0, 1, 3, 4])  # pool, prune, resampler, text only: 4, 3, 2 and 0 image tokens
    together = module.step(batch)
    parts, tokens = [], []
    for row, choice in enumerate([0, 1, 3, 4]):
        force(module, [choice])
        alone = {key: value[row : row + 1] for key, value in batch.items()}
        parts.append(module.step(alone))
        tokens.append(
            int((alone["labels"][:, 1:] != -100).sum()) - (choice == 4)
        )  # text only: no prediction of the first word
    total = sum(tokens)
    for name in ("ce", "feature"):
        mixed = sum(p[name] * (n + 1e-5) for p, n in zip(parts, tokens, strict=True)) / (total + 1e-5)
        assert torch.allclose(together[name], mixed, atol=1e-5), name


@pytest.mark.parametrize("primitive", ALL)
def test_the_step_plan_counts_labels_only_where_every_label_keeps_its_prediction(vlm, primitive):
    batch, target = vlm
    module = module_for(target, compressor={"mode": "fixed", "primitives": [primitive]})
    ids, labels = batch["input_ids"], batch["labels"]
    with torch.no_grad():
        out = target(input_ids=ids, pixel_values=batch["pixel_values"], output_hidden_states=True)
    rows = module.student.compress_rows(out.hidden_states[-1][:, :-1], out.hidden_states[0][:, 1:], ids[:, :-1])
    trained = int(((at(labels, rows.aligned) != -100) & rows.valid).sum())
    assert (trained == int((labels[:, 1:] != -100).sum())) == module.student.keeps_every_label
    planned = []
    module.step_weights.start_epoch = lambda trainer, epoch, device, enabled: planned.append(enabled)
    module._trainer = SimpleNamespace(current_epoch=0)
    module.on_train_epoch_start()
    assert planned == [module.student.keeps_every_label] == [primitive != "text_only"]


def vlm_recipe(tmp_path, compressor: dict | None, **changes) -> dict:
    """A tiny draft_distill run on caption rows: a one-layer LLaVA-style target trained first, a few draft steps."""
    data = {"name": "captions", "num_images": 96, "image_size": 32, "patch_size": 8, "batch_size": 16}
    recipe = {
        "task": "draft_distill",
        "run": {"root": str(tmp_path / "runs"), "name": "compressor"},
        "data": data,
        "student": {"name": "eagle_draft", "compressor": compressor},
        "teacher": {
            "model": {"name": "llava_tiny", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
            "store": str(tmp_path / "teachers"),
            "train": {
                "optimizer": {"name": "adamw", "lr": 0.003},
                "scheduler": {"name": "constant"},
                "trainer": {**FAST_TRAINER, "max_epochs": 1, "limit_val_batches": 1},
            },
        },
        "speculative": {"depth": 3, "prompts": 2, "prompt_tokens": 17, "max_new_tokens": 8},
        "loss": {"ce_weight": 0.0, "terms": {"draft_distill": {"weight": 1.0}}},
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "scheduler": {"name": "constant"},
        "trainer": {**FAST_TRAINER, "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1},
    }
    recipe.update(changes)
    return recipe


def test_a_gate_recipe_trains_decodes_losslessly_and_is_refused_by_the_eagle_export(tmp_path, monkeypatch, capsys):
    compressor = {"mode": "gate", "primitives": ALL, "gate_temperature": 0.5}
    result = fit(from_dict(vlm_recipe(tmp_path, compressor), "test"))
    metrics = logged(result.run_dir)
    assert metrics["val/lossless"] == [1.0] and result.metrics["test/lossless"] == 1.0
    assert all(torch.isfinite(torch.tensor(metrics[f"train/{name}"])).all() for name in ("loss", "ce", "feature"))
    # the gate and the primitives are the student's, in its checkpoint; the export says why it cannot write them
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(result.best_checkpoint), "--out", "draft"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "visual compressor (gate: pool, prune, conv, resampler, text_only)" in line
    assert "serving engines' EAGLE readers do not have" in line and not (tmp_path / "draft").exists()


@pytest.mark.parametrize(  # a second or two each on a quiet machine: in the default suite
    "compressor",
    [
        *({"mode": "fixed", "primitives": [name]} for name in ALL),
        {"mode": "weighted", "primitives": ALL},
        {"mode": "concat", "primitives": ["pool", "prune", "conv", "resampler"]},
    ],
    ids=[*ALL, "weighted", "concat"],
)
def test_a_recipe_of_each_variant_trains_and_decodes_losslessly(tmp_path, compressor):
    from distill.analysis.draft_run import load_draft_run

    result = fit(from_dict(vlm_recipe(tmp_path, compressor), "test"))
    metrics = logged(result.run_dir)
    assert metrics["val/lossless"] == [1.0] and result.metrics["test/lossless"] == 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"])).all()
    trained = load_draft_run(result.run_dir).trained  # rebuilt from the run's recipe and checkpoint
    settings = trained.compressor.settings
    assert (settings.mode, settings.primitives) == (compressor["mode"], compressor["primitives"])


def test_the_recipe_checks_the_compressor_section_and_prints_it_whole(tmp_path):
    from distill.config import to_yaml
    from distill.errors import DistillError, RecipeError

    loaded = from_dict(vlm_recipe(tmp_path, {"mode": "gate", "primitives": ["pool", "conv"]}), "r.yaml")
    printed = to_yaml(loaded.resolved)
    assert loaded.resolved["student"]["compressor"] == {
        "mode": "gate",
        "primitives": ["pool", "conv"],
        "factor": 4,
        "keep": 4,
        "queries": 4,
        "gate_temperature": 1.0,
        "gate_hidden": 64,
    }
    assert "gate_hidden: 64" in printed  # every default shown
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown key 'student\.compressor\.mod' \(did you mean 'mode'\?\)"):
        from_dict(vlm_recipe(tmp_path, {"mod": "gate"}), "r.yaml")
    with pytest.raises(RecipeError, match=r"'student\.compressor\.primitives\.1' must be one of .*did you mean 'pool'"):
        from_dict(vlm_recipe(tmp_path, {"mode": "gate", "primitives": ["conv", "poool"]}), "r.yaml")
    with pytest.raises(DistillError, match=r"^student\.compressor\.factor must be >= 1, got 0$"):
        from_dict(vlm_recipe(tmp_path, {"factor": 0}), "r.yaml")  # when the recipe is read: before any training
