"""The online draft-distillation task: the target runs on every batch and stays frozen, the draft learns, and
speculative decoding of held-out prompts gets longer accepted runs while staying lossless."""

from __future__ import annotations

import csv

import pytest
import torch

from distill.config import from_dict
from distill.engine.pipeline import fit
from distill.models import create_model
from distill.models.draft import EagleDraft
from distill.models.weights import read_checkpoint
from distill.tasks.draft_distill import DraftDistillTask
from losses import DraftDistillLoss
from tests.helpers import FAST_TRAINER

TARGET = {"name": "llama", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2}
DATA = {"name": "text", "seq_len": 64, "batch_size": 16, "max_documents": 400}


def draft_recipe(tmp_path, **changes) -> dict:
    recipe = {
        "task": "draft_distill",
        "run": {"root": str(tmp_path / "runs"), "name": "draft"},
        "data": DATA,
        "student": {"name": "eagle_draft"},
        "teacher": {
            "model": TARGET,
            "store": str(tmp_path / "teachers"),
            "train": {
                "optimizer": {"name": "adamw", "lr": 0.01},
                "scheduler": {"name": "constant"},
                "trainer": {**FAST_TRAINER, "max_epochs": 2, "limit_train_batches": 60, "limit_val_batches": 2},
            },
        },
        "speculative": {"depth": 4, "prompts": 3, "prompt_tokens": 16, "max_new_tokens": 24},
        "loss": {"ce_weight": 0.0, "terms": {"draft_distill": {"weight": 1.0}}},
        "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
        "scheduler": {"name": "constant"},
        "trainer": {**FAST_TRAINER, "max_epochs": 2, "limit_train_batches": 40, "limit_val_batches": 2},
    }
    recipe.update(changes)
    return recipe


def logged(run_dir) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    with open(run_dir / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value:
                    values.setdefault(key, []).append(float(value))
    return values


def test_the_draft_learns_online_and_decoding_stays_lossless(tmp_path):
    from distill.analysis.draft_run import AcceptedLengths

    lengths = AcceptedLengths(["4", "3x4x12"])  # a chain and a tree, measured along the run
    result = fit(from_dict(draft_recipe(tmp_path), "test"), callbacks=[lengths])
    metrics = logged(result.run_dir)
    curves = lengths.curves()
    assert curves["4"][0] == curves["3x4x12"][0] == [0, 1, 2]  # before training, then after each epoch
    logged_lengths = [metrics["start/accepted_length"][0], *metrics["val/accepted_length"]]
    assert curves["4"][1] == pytest.approx(logged_lengths, rel=1e-6)  # the task's own measure (logged in fp32)
    assert curves["3x4x12"][1][-1] > curves["3x4x12"][1][0] + 0.3  # the tree gains from training too
    assert all(row["lossless"] == 1.0 for row in lengths.rows)
    start, after = metrics["start/accepted_length"][0], metrics["val/accepted_length"][-1]
    # an untrained draft is rarely accepted (1.0-1.3 tokens per round, by machine: the tiny target's training
    # differs in the last bits between CPUs); the trained one is accepted far more often
    assert start < 1.5 and after > start + 0.3, (start, after)
    assert metrics["val/lossless"] == [1.0, 1.0] and result.metrics["test/lossless"] == 1.0
    assert metrics["val/agreement"][-1] > metrics["val/agreement"][0]
    assert {"train/ce", "train/feature", "train/loss"} <= set(metrics)
    # the checkpoint holds the draft only, and records where the target came from
    checkpoint = read_checkpoint(result.best_checkpoint)
    assert all(key.startswith("student.") for key in checkpoint["state_dict"])
    assert not any("embed" in key or "lm_head" in key for key in checkpoint["state_dict"])
    assert checkpoint["distill"]["sources"]["teacher"]["weights"].endswith("teacher.pt")


def tiny_module() -> DraftDistillTask:
    torch.manual_seed(0)
    target = create_model("llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1)
    return DraftDistillTask(EagleDraft.for_target(target), target, DraftDistillLoss(), prompts=0)


def test_every_step_runs_the_frozen_target_and_trains_only_the_draft():
    module = tiny_module()
    calls = []
    module.teacher.base_model.register_forward_hook(lambda *args: calls.append(1))  # its backbone, chunked or not
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(module.student.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        ids = torch.randint(0, 61, (2, 12), generator=g)
        labels = ids.clone()
        labels[0, :5] = -100  # a prompt: not distilled
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        loss = module.training_step(batch, step)
        loss.backward()
        assert all(p.grad is None for p in module.teacher.parameters())
        optimizer.step()
        optimizer.zero_grad()
    assert len(calls) == 3  # online: the target ran on every batch, nothing was cached
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in before.items())
    assert not module.teacher.training and module.train().teacher.training is False


def test_positions_without_a_label_are_not_distilled():
    """Changing the target's behaviour only where labels are -100 (prompt, image tokens, padding) must not change
    the loss: here the draft's prediction at those positions is garbage and the loss does not see it."""
    module = tiny_module()
    ids = torch.randint(0, 61, (1, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :6] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    reference = module.step(batch)["loss"]
    hooked = module.student.register_forward_hook(lambda m, args, out: out.index_fill(1, torch.arange(4), 1e4))
    assert torch.allclose(module.step(batch)["loss"], reference)  # draft positions 0-3 predict tokens 1-4
    hooked.remove()
    labels[0, 6] = -100  # one more unlabelled position: the loss changes
    assert not torch.allclose(module.step(batch)["loss"], reference)


def test_a_vlm_target_trains_the_draft_on_pooled_visual_tokens_and_text_labels_only():
    from distill.data import create_datamodule

    data = create_datamodule("captions", num_images=8, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    target = create_model("llava_tiny", **data.model_args("teacher"))
    module = DraftDistillTask(EagleDraft.for_target(target, visual_pool=4), target, DraftDistillLoss(), prompts=0)
    seen = []
    module.student.register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    values = module.step(batch)
    length = batch["input_ids"].shape[1]
    assert seen == [length - 1 - (16 - 4)]  # the 16 image positions read as 4
    assert torch.isfinite(values["loss"]) and values["loss"] > 0
    values["loss"].backward()
    assert all(p.grad is None for p in module.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.student.parameters())


def test_an_output_that_differs_from_greedy_is_reported_loudly(monkeypatch):
    import distill.tasks.draft_distill as task
    from distill.generate.speculative import SpeculativeReport

    module = tiny_module()
    monkeypatch.setattr(module, "held_out_prompts", lambda: [{"input_ids": torch.ones(1, 4, dtype=torch.long)}])
    broken = SpeculativeReport(accepted_length=2.0, speedup=1.0, lossless=0.5, prompts=2, tokens=10)
    monkeypatch.setattr(task, "evaluate_speculative", lambda *args, **kwargs: broken)
    with pytest.warns(UserWarning, match="differed from greedy on 50% of prompts"):
        module.log_speculative("val")


def test_the_chunked_head_gives_the_step_of_full_logits():
    """Draft and target logits through the shared head a chunk at a time: the same loss, parts, agreement and draft
    gradients as whole logits, and the target's head never runs as a module."""
    results = {}
    for logits in ("full", "chunked"):
        torch.manual_seed(0)
        target = create_model("llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=1)
        module = DraftDistillTask(
            EagleDraft.for_target(target), target, DraftDistillLoss(), prompts=0, logits=logits, chunk_size=5
        )
        head_runs = []
        target.lm_head.register_forward_hook(lambda *_, runs=head_runs: runs.append(1))
        ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(3))
        labels = ids.clone()
        labels[0, :5] = -100
        values = module.step({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
        values["loss"].backward()
        grads = [p.grad.clone() for p in module.student.parameters() if p.grad is not None]
        results[logits] = (values, grads, len(head_runs))
    (full, full_grads, full_runs), (chunked, chunked_grads, chunked_runs) = results["full"], results["chunked"]
    assert full_runs > 0 and chunked_runs == 0
    for name in ("loss", "ce", "feature", "agreement"):
        assert torch.allclose(full[name], chunked[name], atol=1e-6), name
    assert len(full_grads) == len(chunked_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full_grads, chunked_grads, strict=True))
