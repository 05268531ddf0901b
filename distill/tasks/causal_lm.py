"""Distillation between causal language models (Hugging Face `...ForCausalLM` modules; `task: causal_lm`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric

from distill.config.schema import setting
from distill.data.interface import ResponseData, TokenData
from distill.errors import DistillError
from distill.models.causal_lm import output_rows
from distill.models.vlm import VISION_INPUTS
from distill.tasks.base import WeightedTermsTask
from distill.tasks.causal_lm_checks import check, check_data, chunk_size
from distill.tasks.context import BuildContext, TokenTeacherOutputs
from distill.tasks.lm_evaluation import SUMS, epoch_metrics, evaluation_sums
from distill.tasks.lm_outputs import (
    HeadSettings,
    LMOutputs,
    LogitsMode,
    TeacherView,
    chunk_blocker,
    row_inputs,
    run_lm,
    use_chunks,
)
from distill.tasks.loss_terms import LossTerms, call_term
from distill.tasks.policy import Mode, ResponsePolicy, SamplingSettings, Tokenizers
from distill.tasks.spec import SummaryRow, TaskSpec, register_task
from distill.tasks.step_tokens import StepTokenWeights
from losses import TokenDivergenceLoss
from losses.chunked import (
    cross_entropy_rows,
    fused_masked_sum_and_count,
    rows_per_chunk,
    weighted_row_loss,
)
from losses.consumes import SEQUENCE_LOGITS, TOKEN_FEATURES, TOKEN_LOGITS

Batch = dict[str, torch.Tensor]
ACCEPTS = frozenset({TOKEN_LOGITS, SEQUENCE_LOGITS, TOKEN_FEATURES})


@dataclass
class CausalLMSettings(HeadSettings):
    """The recipe's `causal_lm:` section."""

    SECTION: ClassVar[str] = "causal_lm"
    mode: Mode = setting(
        "off_policy",
        "whose responses the student trains on: the data's (off_policy), its own samples of each row's last answer "
        "(on_policy), its own in a fraction student_fraction of the batches, drawn per batch (mixed: GKD's lambda), "
        "or the teacher's, generated once and stored in `responses` (sequence)",
    )
    student_fraction: float = setting(
        0.5, "mixed: the chance that a batch trains on the student's samples, drawn per batch (all its rows alike)"
    )
    sampling: SamplingSettings = setting(SamplingSettings(), "how responses are generated")
    responses: str | None = setting(None, "sequence: the folder keeping the teacher's responses for later runs")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.student_fraction <= 1.0:
            raise DistillError(f"causal_lm.student_fraction must be in [0, 1], got {self.student_fraction}")
        if self.mode == "sequence" and self.responses is None:
            raise DistillError(
                "causal_lm.mode sequence needs causal_lm.responses: a folder for the teacher's responses"
            )


def term_blocker(term: nn.Module) -> str | None:
    """Why a loss term cannot run without full logits, or None: token terms need a row form, sequence terms a
    kept-values form."""
    kind = term.consumes.kind
    if kind == TOKEN_LOGITS and not hasattr(term, "row_loss"):
        return f"{type(term).__name__} has no row form (row_loss)"
    if kind == SEQUENCE_LOGITS and not hasattr(term, "from_kept"):
        return f"{type(term).__name__} has no kept-values form (from_kept)"
    return None


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

    With chunked logits (`logits`: "auto" where the models and terms allow it, or "chunked") neither model's
    `[B, T, V]` logits exist: the models' backbones give their final hidden states, and CE and the token terms run
    through the LM heads a chunk of tokens at a time (`losses.chunked`), sharing each chunk's student logits; GLD
    reads each side's top-k values, computed per chunk (`losses.chunked.head_rows_map`). The result equals the full
    path (loss and gradients).

    With a teacher cache (`teacher_cache`, teacher.cache on token data) the teacher's top-k per position is read
    from it; a row not yet stored is computed, stored, and read back, so the first run trains on exactly what later
    runs read. The reported KL is then over the stored top-k plus one tail bucket (exact when all entries are kept).
    When the cache already held every row, the engine does not load the teacher at all (`teacher` is None).

    Args:
        student: a causal LM returning `.logits` (the model being trained).
        teacher: the frozen teacher, or None.
        terms: loss terms by name, each `(weight, module)`.
        ce_weight: weight of the next-token cross-entropy on the labels.
        logits: "auto", "chunked" or "full" (see above).
        chunk_size: tokens per chunk of the LM heads, and of the token terms built without a chunk size of their own
            when they get full logits; None: `losses.chunked.rows_per_chunk` of the vocabulary.
        teacher_cache: the stored teacher outputs, or None.
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        terms: LossTerms | None = None,
        ce_weight: float = 1.0,
        logits: LogitsMode = "auto",
        chunk_size: int | None = None,
        teacher_cache: TokenTeacherOutputs | None = None,
        policy: ResponsePolicy | None = None,
        **common: Any,
    ) -> None:
        stored = teacher_cache is not None
        super().__init__(student, {"teacher": teacher}, terms, ce_weight, ACCEPTS, teacher_stored=stored, **common)
        teacher_rows = output_rows(teacher) or (teacher_cache.vocab_size if teacher_cache is not None else 0)
        chunk_size = chunk_size or rows_per_chunk(max(output_rows(student), teacher_rows))
        for term in self.terms.values():
            # one chunk size on both paths: a token term given full logits (`full`, or `auto` falling back) runs in
            # the task's chunks too, unless it was built with its own
            if term.consumes.kind == TOKEN_LOGITS and getattr(term, "chunk_size", 0) is None:
                term.chunk_size = chunk_size
        self.report_kl = TokenDivergenceLoss("forward_kl", chunk_size=chunk_size)  # reported, not trained
        self.sums = nn.ModuleDict({f"{stage}_{what}": SumMetric() for stage in ("val", "test") for what in SUMS})
        self.logits_mode, self.chunk_size, self.teacher_cache = logits, chunk_size, teacher_cache
        self.policy = policy
        self.step_weights = StepTokenWeights()
        if logits == "chunked":
            self.student_chunked()  # refuses now what it can
        needs_logits = [name for name, term in self.terms.items() if term_blocker(term)]
        if teacher_cache is not None and needs_logits:
            raise DistillError(
                f"teacher.cache: loss term {needs_logits[0]} needs the teacher's full logits, which the cache does not "
                "keep (it stores the top-k per token); drop teacher.cache or the term"
            )

    def student_chunked(self) -> bool:
        """Whether this step runs without the student's full logits."""
        blockers = (chunk_blocker(self.student), *map(term_blocker, self.terms.values()))
        return use_chunks(self.logits_mode, "causal_lm", blockers)

    def run_student(self, batch: Batch) -> LMOutputs:
        return run_lm(self.student, batch["input_ids"], row_inputs(batch), vision_inputs(batch), self.student_chunked())

    def teacher_view(self, batch: Batch, split: str, chunked: bool) -> TeacherView:
        """The teacher's side of the batch: stored top-k from the cache (computed and stored first when missing),
        else its outputs, chunked when the student is (`chunked`) and the teacher's head allows (no gradient)."""
        if self.teacher_cache is not None and "index" in batch:
            ids = batch.get("teacher_input_ids", batch["input_ids"])
            positions = ids.shape[1] - 1  # a batch padded to its longest row reads its rows' first positions
            stored = self.teacher_cache.read(split, batch["index"], positions)
            if stored is None:
                if self.teacher is None:  # not loaded: the cache was complete when the run started
                    raise DistillError(f"teacher.cache: rows of the {split} split are missing from the cache")
                outputs = self._teacher_outputs(batch, chunked=self.logits_mode != "full")
                stored = outputs.stored_form(self.teacher_cache.k, ids[:, 1:], self.chunk_size)
                self.teacher_cache.write(split, batch["index"], stored)
                stored = self.teacher_cache.read(split, batch["index"], positions)  # train on exactly what is stored
                assert stored is not None
            return TeacherView(stored=stored.to(batch["input_ids"].device))
        return self._teacher_outputs(batch, chunked)

    @torch.no_grad()
    def _teacher_outputs(self, batch: Batch, chunked: bool) -> TeacherView:
        prefix = "teacher_" if "teacher_input_ids" in batch else ""
        chunked = chunked and chunk_blocker(self.teacher) is None
        rows = row_inputs(batch, prefix)
        return TeacherView(
            outputs=run_lm(self.teacher, batch[f"{prefix}input_ids"], rows, vision_inputs(batch), chunked)
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **vision: torch.Tensor
    ) -> torch.Tensor:
        return self.student(input_ids=input_ids, attention_mask=attention_mask, **vision).logits

    @staticmethod
    def shifted_inputs(batch: Batch) -> dict[str, torch.Tensor]:
        labels = batch["labels"][:, 1:]  # (B, T-1): the token each position predicts
        teacher_labels = batch.get("teacher_labels", batch["labels"])[:, 1:]
        return {"labels": labels, "student_mask": labels != -100, "teacher_mask": teacher_labels != -100}

    def on_train_epoch_start(self) -> None:
        generated = self.policy is not None and self.policy.mode != "off_policy"  # tokens unknown before the step
        self.step_weights.start_epoch(self.trainer, self.current_epoch, self.device, enabled=not generated)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.policy is not None:
            batch = self.policy.batch(batch, batch_idx, self.current_epoch, self.student, self.teacher)
        with self.student_layers.read() as student_features:
            student = self.run_student(batch)
        with self.teacher_layers.read() as teacher_features:
            teacher = self.teacher_view(batch, "train", student.chunked) if len(self.terms) else None
        inputs = {**self.shifted_inputs(batch), "epoch": self.current_epoch + 1}
        # hidden states are per input position: position t is distilled where the token it predicts is
        inputs["mask"] = F.pad(inputs["student_mask"], (0, 1), value=False)  # (B, T)
        features = self.feature_values((student_features, teacher_features), inputs)
        if student.chunked:
            token_loss, other_loss, parts = self._chunked_loss(student, teacher, inputs)
        else:
            token_loss, other_loss, parts = self._full_loss(student, teacher, inputs)
        token_loss, parts = token_loss + self.weighted_sum(features), {**parts, **features}
        self.last_parts = parts  # named in the message if the loss is ever not finite
        self.log_parts(token_loss + other_loss, parts)
        # weighted by this micro-batch's share of the optimizer step's tokens (`tasks.step_tokens`)
        return token_loss * self.step_weights.scale(batch_idx, inputs["student_mask"].sum()) + other_loss

    def on_train_epoch_end(self) -> None:
        if self.teacher_cache is not None:
            self.teacher_cache.flush()
        if self.policy is not None and self.policy.store is not None:
            self.policy.store.flush()
        self.step_weights.end_epoch()

    def _full_loss(
        self, student: LMOutputs, teacher: TeacherView | None, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor | float, dict[str, torch.Tensor]]:
        """CE and every term on the student's full logits (the teacher's logits, or its stored top-k): the
        weighted token means, the weighted sequence terms, and every part."""
        assert student.logits is not None
        parts = {}
        if self.ce_weight:
            nll, tokens = next_token_nll(student.logits, inputs["labels"])
            parts["ce"] = nll / tokens.clamp(min=1)
        for name, term in self.logit_terms().items():
            assert teacher is not None
            if teacher.stored is not None:
                parts[name] = self._stored_term(term, student, teacher, inputs)
            else:
                parts[name] = call_term(term, student.logits, teacher.logits, inputs)
        sequence = {name for name, term in self.logit_terms().items() if term.consumes.kind == SEQUENCE_LOGITS}
        token_loss = self.weighted_sum({name: value for name, value in parts.items() if name not in sequence})
        other_loss = self.weighted_sum({name: parts[name] for name in sequence})
        return token_loss, other_loss, parts

    def _stored_term(
        self, term: nn.Module, student: LMOutputs, teacher: TeacherView, inputs: dict[str, Any]
    ) -> torch.Tensor:
        """A term against the stored teacher: token terms read its top-k as their teacher, GLD its kept values."""
        if term.consumes.kind == SEQUENCE_LOGITS:
            return self._sequence_term(term, student, teacher, inputs)
        return call_term(term, student.logits, teacher.source(), inputs)

    def _sequence_term(
        self, term: nn.Module, student: LMOutputs, teacher: TeacherView, inputs: dict[str, Any]
    ) -> torch.Tensor:
        student_kept = student.kept(term.top_k, term.transform, self.chunk_size)
        teacher_kept = teacher.kept(term.top_k, term.transform, self.chunk_size)
        return term.from_kept(student_kept, teacher_kept, inputs["student_mask"], inputs["teacher_mask"])

    def _chunked_loss(
        self, student: LMOutputs, teacher: TeacherView | None, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor | float, torch.Tensor | float, dict[str, torch.Tensor]]:
        """CE and the token terms in one chunk loop over the student's head (each chunk's logits computed once),
        the sequence terms from kept values: the weighted token means, the weighted sequence terms, and every part
        (detached where summed over chunks)."""
        source = teacher.source() if teacher is not None else None
        row_parts, padding, sequence = [], {}, {}
        if self.ce_weight:
            row_parts.append(("ce", self.ce_weight, cross_entropy_rows))
        for name, term in self.logit_terms().items():
            assert teacher is not None and source is not None
            if term.consumes.kind == TOKEN_LOGITS:
                term.check_teacher(source)
                padding[name] = []
                row_parts.append((name, self.weights[name], term.row_loss(padding[name])))
            else:
                sequence[name] = self._sequence_term(term, student, teacher, inputs)
        parts: dict[str, torch.Tensor] = {}
        sequence_loss = self.weighted_sum(sequence)
        token_loss: torch.Tensor | float = 0.0
        if row_parts:
            assert student.hidden is not None and student.head is not None
            sums: dict[str, list[torch.Tensor]] = {}
            total, count = fused_masked_sum_and_count(
                weighted_row_loss(row_parts, sums),
                student.hidden,
                student.head.weight,
                student.head.bias,
                source if padding else None,  # token terms read the teacher; CE alone does not
                inputs["labels"],
                -100,
                self.chunk_size,
            )
            for name, pad_mass in padding.items():
                self.terms[name].check_padding(pad_mass, student.vocab_size, source.vocab_size)
            token_loss = total / max(count, 1)
            zero = total.detach() * 0
            parts = {
                name: torch.stack(sums[name]).sum() / max(count, 1) if name in sums else zero for name, *_ in row_parts
            }
        return token_loss, sequence_loss, {**parts, **sequence}

    def evaluate_batch(self, batch: Batch, batch_idx: int, stage: str) -> None:
        student = self.run_student(batch)
        labels = self.shifted_inputs(batch)["labels"]
        teacher = None
        has_teacher = self.teacher is not None or self.teacher_cache is not None
        if has_teacher and "teacher_input_ids" not in batch:  # teacher numbers need the same tokens
            teacher = self.teacher_view(batch, "val", student.chunked)
        sums, tokens = evaluation_sums(student, teacher, labels, self.report_kl, self.chunk_size)
        self.sums[f"{stage}_tokens"].update(torch.tensor(float(tokens), device=labels.device))
        for what, value in sums.items():
            self.sums[f"{stage}_{what}"].update(value)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, stage: str) -> None:
        metrics = epoch_metrics(self.sums, stage)
        if metrics:
            self.log_dict(metrics, prog_bar=stage == "val")


def build(ctx: BuildContext) -> CausalLMTask:
    if not isinstance(ctx.data, TokenData):
        raise DistillError(f"data: task causal_lm reads token rows; {ctx.recipe.data['name']} has none")
    settings: CausalLMSettings = ctx.settings
    student = ctx.student()
    return CausalLMTask(
        student,
        ctx.teacher,
        ctx.terms(student, token_probe),
        ctx.recipe.loss.ce_weight,
        logits=settings.logits,
        chunk_size=chunk_size(ctx.recipe, settings),
        teacher_cache=ctx.teacher_outputs,  # type: ignore[arg-type]
        policy=response_policy(ctx, settings) if ctx.training else None,
        **ctx.common(),
    )


def token_probe(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """A forward pass on one row of 8 tokens (what hidden-state terms are checked and shaped on)."""
    model(input_ids=torch.zeros(1, 8, dtype=torch.long, device=device))


def response_policy(ctx: BuildContext, settings: CausalLMSettings) -> ResponsePolicy | None:
    """Whose responses training reads (`causal_lm.mode`); None for the data's own."""
    if settings.mode == "off_policy":
        return None
    check_data(ctx.data, settings)
    data: Any = ctx.data
    tokenizers = Tokenizers(data.tokenizer, getattr(data, "teacher_tokenizer", data.tokenizer))
    if isinstance(data, ResponseData):  # answers end at the template's end of turn; rows keep the data's length
        sides = ("student", "teacher")
        tokenizers.stops = {side: data.end_of_turn(side) for side in sides}
        tokenizers.row_lengths = {side: data.row_length(side) for side in sides}
    store = ctx.teacher_responses
    if settings.mode == "sequence" and store is None:
        raise DistillError("causal_lm.mode sequence trains on a teacher's responses; the recipe has no teacher")
    return ResponsePolicy(
        settings.mode, settings.student_fraction, settings.sampling, tokenizers, ctx.recipe.seed, store
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
        check_data=check_data,
        settings=CausalLMSettings,
        reads_teacher_cache=True,
    )
)
