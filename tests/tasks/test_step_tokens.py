"""Token losses are normalized by the tokens of the whole optimizer step: 4 accumulated micro-batches of unequal
lengths give the gradient of the single large batch (and per-micro-batch means, the old way, do not), and the
plan's token counts are those of every rank's batches."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from distill.data.base import EpochSeededLoader
from distill.data.sharding import SeededShardSampler
from distill.data.text import CausalLMDataModule
from distill.models import create_model
from distill.models.draft import EagleDraft
from distill.tasks import step_tokens
from distill.tasks.causal_lm import CausalLMTask
from distill.tasks.draft_distill import DraftDistillTask
from distill.tasks.step_tokens import StepTokens, plan_epoch, row_tokens
from losses import DraftDistillLoss, TokenDivergenceLoss


def pairs_file(tmp_path, count: int = 40):
    """Prompt/response pairs whose responses run from a few bytes to the whole row: rows of very unequal tokens."""
    lines = [{"prompt": f"question {i}: ", "response": "answer " + "x" * (3 + (i * 7) % 45)} for i in range(count)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


def tiny_llama(seed: int, width: int):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=259, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1)


class FirstStepGradients(L.Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.grads:
            self.grads = {n: p.grad.clone() for n, p in module.student.named_parameters() if p.grad is not None}


def causal_lm_task(logits: str) -> CausalLMTask:
    terms = {"kl": (0.5, TokenDivergenceLoss("forward_kl"))}
    return CausalLMTask(tiny_llama(0, 32), tiny_llama(1, 48), terms=terms, ce_weight=1.0, logits=logits)


def draft_task(logits: str) -> DraftDistillTask:
    target = tiny_llama(1, 48)
    torch.manual_seed(2)
    return DraftDistillTask(EagleDraft.for_target(target), target, DraftDistillLoss(), prompts=0, logits=logits)


def first_step_gradients(
    tmp_path, batch_size: int, accumulate: int, logits: str, make=causal_lm_task
) -> dict[str, torch.Tensor]:
    data = CausalLMDataModule(source=str(pairs_file(tmp_path)), seq_len=64, packing=False, batch_size=batch_size)
    module = make(logits)
    grads = FirstStepGradients()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[grads],
    )
    trainer.fit(module, datamodule=data)
    return grads.grads


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-12)) for n in a)


@pytest.mark.parametrize(
    ("make", "logits"), [(causal_lm_task, "full"), (causal_lm_task, "chunked"), (draft_task, "chunked")]
)
def test_four_accumulated_micro_batches_give_the_gradient_of_the_large_batch(tmp_path, make, logits, monkeypatch):
    large = first_step_gradients(tmp_path, batch_size=8, accumulate=1, logits=logits, make=make)
    accumulated = first_step_gradients(tmp_path, batch_size=2, accumulate=4, logits=logits, make=make)
    assert max_difference(accumulated, large) < 1e-5
    # the per-micro-batch mean (what Lightning's division by N alone gives) is visibly another gradient
    monkeypatch.setattr(step_tokens, "plan_epoch", lambda *args: None)
    naive = first_step_gradients(tmp_path, batch_size=2, accumulate=4, logits=logits, make=make)
    assert max_difference(naive, large) > 1e-2


def test_the_plan_counts_the_batches_every_rank_reads(tmp_path):
    data = CausalLMDataModule(source=str(pairs_file(tmp_path, 37)), seq_len=64, packing=False, batch_size=3)
    data.setup()
    labels = data.train_set.tensors["labels"]
    world, accumulate, epoch = 2, 2, 3
    read: list[list[int]] = []  # trained tokens of each rank's micro-batches, as its loader delivers them
    plans = []
    for rank in range(world):
        sampler = SeededShardSampler(data.train_set, num_replicas=world, rank=rank)
        loader = EpochSeededLoader(data.train_set, sampler=sampler, seed=5, epoch_fn=lambda: epoch, batch_size=3)
        read.append([int(row_tokens(batch["labels"]).sum()) for batch in loader])
        plans.append(plan_epoch(loader, epoch, accumulate))
    assert plans[0].per_step == plans[1].per_step  # every rank plans the same steps, with no communication
    per_batch = [a + b for a, b in zip(*read, strict=True)]
    assert plans[0].per_step == tuple(sum(per_batch[s : s + accumulate]) for s in range(0, len(per_batch), 2))
    assert sum(plans[0].per_step) == sum(map(sum, read)) >= int(row_tokens(labels).sum())  # padding counts twice
    for rank in range(world):
        assert plans[rank].mine == tuple(read[rank])
        plans[rank].check(1, 3, sum(read[rank][1:4]))
    with pytest.raises(RuntimeError, match="does not deliver the seeded order"):
        plans[0].check(0, 2, sum(read[0][:2]) + 1)


def test_one_micro_batch_on_one_process_keeps_the_mean_unchanged():
    plan = StepTokens(per_step=(10, 7), mine=(10, 7), accumulate=1, world=1)
    assert plan.scale(1, torch.tensor(7)) == 1.0
    tokens = torch.tensor(3)
    assert float(StepTokens((10,), (3, 7), accumulate=2, world=1).scale(0, tokens)) == pytest.approx(3 * 2 / 10)
