"""Distillation between causal language models (Hugging Face `...ForCausalLM` modules; `task: causal_lm`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric

from distill.config.schema import Recipe
from distill.data.interface import TokenData
from distill.errors import DistillError
from distill.models.vlm import VISION_INPUTS
from distill.tasks.base import WeightedTermsTask
from distill.tasks.context import BuildContext
from distill.tasks.loss_terms import LOSSES, LossTerms, consumes
from distill.tasks.spec import SummaryRow, TaskSpec, register_task
from losses import TokenDivergenceLoss
from losses.consumes import SEQUENCE_LOGITS, TOKEN_LOGITS

Batch = dict[str, torch.Tensor]
SUMS = ("nll", "tokens", "kl", "agree", "teacher_nll")
ACCEPTS = frozenset({TOKEN_LOGITS, SEQUENCE_LOGITS})


def vision_inputs(batch: Batch) -> Batch:
    """The image inputs of a VLM's batch (none for text), passed to the models beside the ids."""
    return {k: batch[k] for k in VISION_INPUTS if k in batch}


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over the labelled positions, and their count (fp32)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return nll, (labels != -100).sum()


class CausalLMTask(WeightedTermsTask):
    """Trains a causal-LM student on `ce_weight * CE(next token) + sum_i weight_i * term_i`.

    Logits are shifted once here (position t predicts token t+1), so every term sees aligned
    `student_logits [B, T-1, V]`, `teacher_logits [B, T'-1, V']` and, by the kind it consumes, `labels [B, T-1]`
    (-100 where not distilled: prompt and padding; `losses.consumes.TOKEN_LOGITS`) or `student_mask`/`teacher_mask`
    (the distilled positions of each side, which differ when teacher and student tokenize differently;
    `SEQUENCE_LOGITS`), plus `epoch` when it declares it.
    Validation and test report the student's loss and perplexity, and, when both share a tokenizer, the per-token
    KL(teacher || student), next-token agreement and the teacher's own loss.

    Args:
        student: a causal LM returning `.logits` (the model being trained).
        teacher: the frozen teacher, or None.
        terms: loss terms by name, each `(weight, module)`.
        ce_weight: weight of the next-token cross-entropy on the labels.
        common: `optimizer`, `scheduler`, `sources` and `recipe`, as every task takes them (`DistillationTask`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        terms: LossTerms | None = None,
        ce_weight: float = 1.0,
        **common: Any,
    ) -> None:
        super().__init__(student, {"teacher": teacher}, terms, ce_weight, ACCEPTS, **common)
        self.report_kl = TokenDivergenceLoss("forward_kl", chunk_size=512)  # reported, not trained
        self.sums = nn.ModuleDict({f"{stage}_{what}": SumMetric() for stage in ("val", "test") for what in SUMS})

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **vision: torch.Tensor
    ) -> torch.Tensor:
        return self.student(input_ids=input_ids, attention_mask=attention_mask, **vision).logits

    @torch.no_grad()
    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        ids = batch.get("teacher_input_ids", batch["input_ids"])
        mask = batch.get("teacher_attention_mask", batch["attention_mask"])
        return self.teacher(input_ids=ids, attention_mask=mask, **vision_inputs(batch)).logits

    @staticmethod
    def shifted_inputs(batch: Batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"][:, 1:]  # (B, T-1): the token each position predicts
        teacher_labels = batch.get("teacher_labels", batch["labels"])[:, 1:]
        return {"labels": labels, "student_mask": labels != -100, "teacher_mask": teacher_labels != -100}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        student_logits = self(batch["input_ids"], batch["attention_mask"], **vision_inputs(batch))[:, :-1]  # (B,T-1,V)
        teacher_logits = self.teacher_logits(batch)[:, :-1] if len(self.terms) else None
        inputs = {**self.shifted_inputs(batch), "epoch": self.current_epoch + 1}
        parts = {}
        if self.ce_weight:
            nll, tokens = next_token_nll(student_logits, inputs["labels"])
            parts["ce"] = nll / tokens.clamp(min=1)
        parts.update(self.term_values(student_logits, teacher_logits, inputs))
        loss = self.total_loss(parts)
        self.log_parts(loss, parts)
        return loss

    def evaluate_batch(self, batch: Batch, batch_idx: int, stage: str) -> None:
        student_logits = self(batch["input_ids"], batch["attention_mask"], **vision_inputs(batch))[:, :-1]
        labels = self.shifted_inputs(batch)["labels"]
        nll, tokens = next_token_nll(student_logits, labels)
        self.sums[f"{stage}_nll"].update(nll)
        self.sums[f"{stage}_tokens"].update(tokens.float())
        if self.teacher is None or "teacher_input_ids" in batch:
            return  # teacher-side numbers need the same tokenization
        teacher_logits = self.teacher_logits(batch)[:, :-1]
        valid = labels != -100
        self.sums[f"{stage}_kl"].update(self.report_kl(student_logits, teacher_logits, labels) * tokens)
        agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)) & valid
        self.sums[f"{stage}_agree"].update(agree.sum().float())
        self.sums[f"{stage}_teacher_nll"].update(next_token_nll(teacher_logits, labels)[0])

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        updated = [what for what in SUMS if self.sums[f"{stage}_{what}"].update_count > 0]
        totals = {what: self.sums[f"{stage}_{what}"].compute() for what in updated}
        for what in SUMS:
            self.sums[f"{stage}_{what}"].reset()
        if "tokens" not in totals:
            return
        tokens = totals["tokens"].clamp(min=1)
        loss = totals["nll"] / tokens
        metrics = {f"{stage}/loss": loss, f"{stage}/ppl": torch.exp(loss.clamp(max=math.log(1e6)))}
        if "teacher_nll" in totals:
            teacher_loss = totals["teacher_nll"] / tokens
            metrics |= {
                f"{stage}/kl": totals["kl"] / tokens,
                f"{stage}/agreement": totals["agree"] / tokens,
                f"{stage}/teacher_loss": teacher_loss,
                f"{stage}/teacher_ppl": torch.exp(teacher_loss.clamp(max=math.log(1e6))),
            }
        self.log_dict(metrics, prog_bar=stage == "val")


def build(ctx: BuildContext) -> CausalLMTask:
    if not isinstance(ctx.data, TokenData):
        raise DistillError(f"data: task causal_lm reads token rows; {ctx.recipe.data['name']} has none")
    return CausalLMTask(ctx.student(), ctx.teacher, ctx.terms(), ctx.recipe.loss.ce_weight, **ctx.common())


def check(recipe: Recipe, fail: Callable[[str, str], Exception]) -> None:
    """Per-token terms need both models on the same tokens: refused beside a teacher tokenizer of its own."""
    if not recipe.data.get("teacher_tokenizer"):
        return
    for name, term in recipe.loss.terms.items():
        if consumes(LOSSES.get(term["loss"]), term["loss"]).kind == TOKEN_LOGITS:
            raise fail(
                f"loss.terms.{name}",
                "compares teacher and student token by token, but data.teacher_tokenizer gives the teacher other "
                "tokens: use gld, which works across tokenizers, or drop the teacher's own tokenizer",
            )


SPEC = register_task(
    TaskSpec(
        name="causal_lm",
        description="causal language models: next-token CE plus token-level or sequence-level terms on the teacher",
        build=build,
        monitor=("loss", "min"),
        summary=(
            SummaryRow("teacher loss", "teacher_loss"),
            SummaryRow("teacher perplexity", "teacher_ppl"),
            SummaryRow("student loss", "loss"),
            SummaryRow("student perplexity", "ppl"),
            SummaryRow("KL(teacher || student) per token", "kl"),
            SummaryRow("next-token agreement", "agreement", percent=True),
        ),
        accepts=ACCEPTS,
        check=check,
    )
)
