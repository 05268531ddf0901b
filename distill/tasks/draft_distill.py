"""Online draft distillation for speculative decoding (docs/methods.md, section 8; `task: draft_distill`): the frozen
target runs on every batch (nothing is precomputed or stored) and an EAGLE-style draft learns to predict its next
hidden state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from distill.config.schema import setting
from distill.data.interface import TokenData
from distill.errors import DistillError
from distill.generate.draft_tree import TreeShape
from distill.generate.speculative import evaluate_speculative, prompts_from_rows
from distill.models.causal_lm import output_rows
from distill.models.draft import EagleDraft
from distill.tasks.base import DistillationTask, mean_metrics
from distill.tasks.causal_lm import vision_inputs
from distill.tasks.context import BuildContext
from distill.tasks.lm_outputs import HeadSettings, LogitsMode, chunk_blocker, use_chunks
from distill.tasks.spec import FrozenRole, SummaryRow, TaskSpec, register_task
from distill.tasks.step_tokens import StepTokenWeights
from losses import DraftDistillLoss
from losses.chunked import rows_per_chunk

Batch = dict[str, torch.Tensor]


@dataclass
class SpeculativeSettings(HeadSettings):
    """The recipe's `speculative:` section: how held-out prompts are decoded to measure the draft, and how the
    draft's and the target's logits are computed."""

    SECTION: ClassVar[str] = "speculative"
    depth: int = setting(4, "levels of the draft tree grown per speculative-decoding round (a chain: its length)")
    top_k: int = setting(1, "children per grown node, and nodes grown per level (EAGLE-2's tree; 1: a chain)")
    total_tokens: int | None = setting(None, "draft tokens the target verifies per round: the tree's best (null: all)")
    prompts: int = setting(8, "held-out prompts decoded after each validation (0: none)")
    prompt_tokens: int = setting(32, "tokens of each prompt: the start of a validation row")
    max_new_tokens: int = setting(64, "tokens generated per prompt")

    def __post_init__(self) -> None:
        super().__post_init__()
        TreeShape(self.depth, self.top_k, self.total_tokens)  # a tree that cannot grow is refused with the recipe


class DraftDistillTask(DistillationTask):
    """The draft (student) learns `DraftDistillLoss` against the frozen target (teacher), online.

    Position t of the draft reads the target's `f_t` and the embedding of `x_{t+1}` (the language model's input
    embedding: image features at image tokens) and is aligned with the target's `f_{t+1}` and its logits; the loss
    covers positions whose token has a label (not prompt, image tokens or padding). Validation and test report the
    loss, its parts and `agreement` (the draft's top-1 next-token choice equals the target's); after each validation,
    `accepted_length`, `speedup` and `lossless` from speculative decoding of held-out prompts (the first
    `prompt_tokens` tokens of the first `prompts` validation rows), and `start/*` the same before training.

    Args:
        student: the draft.
        teacher: the frozen target, a transformers causal LM or LLaVA-style VLM.
        objective: the draft distillation loss.
        depth: levels of the draft tree per speculative round (a chain's length).
        top_k: children per grown node and nodes grown per level (1: a chain).
        total_tokens: tree nodes verified per round, the best by the draft's confidence (None: all drawn).
        prompts: held-out prompts decoded at each validation (0: no speculative decoding).
        prompt_tokens: tokens of each prompt.
        max_new_tokens: tokens generated per prompt.
        eos_id: stops generation; None: always `max_new_tokens`.
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
    """

    def __init__(
        self,
        student: EagleDraft,
        teacher: nn.Module,
        objective: DraftDistillLoss,
        depth: int = 4,
        top_k: int = 1,
        total_tokens: int | None = None,
        prompts: int = 8,
        prompt_tokens: int = 32,
        max_new_tokens: int = 64,
        eos_id: int | None = None,
        logits: LogitsMode = "auto",
        chunk_size: int | None = None,
        **common: Any,
    ) -> None:
        if teacher is None:
            raise ValueError("draft distillation needs the target model as its teacher")
        super().__init__(student, {"teacher": teacher}, **common)
        self.logits_mode = logits
        use_chunks(logits, "speculative", [chunk_blocker(teacher)])  # refuses `chunked` now where it cannot run
        self.chunk_size = chunk_size or rows_per_chunk(output_rows(teacher))
        self.objective = objective
        TreeShape(depth, top_k, total_tokens)  # refused now, not after training, if it cannot grow
        self.decoding = {
            "depth": depth,
            "top_k": top_k,
            "total_tokens": total_tokens,
            "max_new_tokens": max_new_tokens,
            "eos_id": eos_id,
        }
        self.prompt_count, self.prompt_tokens = prompts, prompt_tokens
        names = ("loss", "ce", "feature", "agreement")
        self.means = mean_metrics(names)
        self.step_weights = StepTokenWeights()

    @property
    def chunked(self) -> bool:
        """Whether this step runs without full logits: decided when it runs, since FSDP shards the target's head
        (which then cannot be read a chunk at a time) after the task is built."""
        return use_chunks(self.logits_mode, "speculative", [chunk_blocker(self.teacher)])

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        ids, attention = batch["input_ids"], batch["attention_mask"]
        chunked = self.chunked
        target = self.teacher.base_model if chunked else self.teacher  # the backbone alone: no logits
        with torch.no_grad():
            out = target(input_ids=ids, attention_mask=attention, output_hidden_states=True, **vision_inputs(batch))
        features, embeddings = out.hidden_states[-1], out.hidden_states[0]
        # draft position t reads f_t and the embedding of x_{t+1}; image positions maybe compressed, rows padded
        prompt = (batch["labels"][:, :-1] == -100) & attention[:, :-1].bool()  # what the gate reads as the question
        rows = self.student.compress_rows(features[:, :-1], embeddings[:, 1:], ids[:, :-1], question=prompt)
        predicted = self.student(rows.features, rows.next_embeddings, positions=rows.positions, mask=rows.mask)
        head = self.teacher.get_output_embeddings()  # the frozen head, shared
        # f_{t+1} is the state at a labelled token (not image, pad); compressed image tokens and pads have no loss
        mask = (at(batch["labels"], rows.aligned) != -100) & rows.valid
        target_features = at(features, rows.aligned)  # (B, T', H)
        if chunked:
            ce, feature, agreed = self.objective.parts_from_head(
                predicted, target_features, head, mask, self.chunk_size
            )
        else:
            draft_logits, target_logits = head(predicted), at(out.logits, rows.aligned)
            ce, feature = self.objective.parts(draft_logits, target_logits, predicted, target_features, mask)
            agreed = (draft_logits.argmax(-1) == target_logits.argmax(-1))[mask].sum()
        loss = self.objective.combine(ce, feature)
        return {"loss": loss, "ce": ce, "feature": feature, "agreement": agreed.float() / mask.sum().clamp(min=1)}

    def on_train_epoch_start(self) -> None:
        # the plan counts the data's labels: right unless the compressor may drop an image's last prediction
        # (text_only), which then leaves the label after the image without one
        counted = getattr(self.student, "keeps_every_label", True)
        self.step_weights.start_epoch(self.trainer, self.current_epoch, self.device, enabled=counted)

    def on_train_epoch_end(self) -> None:
        self.step_weights.end_epoch()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self.step(batch)
        self.last_parts = {"ce": values["ce"], "feature": values["feature"]}  # named if the loss is not finite
        self.log_training(values)
        tokens = (batch["labels"][:, 1:] != -100).sum()  # the positions the loss averages over
        return values["loss"] * self.step_weights.scale(batch_idx, tokens)  # its share of the step's tokens

    def evaluate_batch(self, batch: Batch, batch_idx: int, stage: str) -> None:
        values = self.step(batch)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        for name, value in values.items():
            self.log_mean(stage, name, value.detach(), max(tokens, 1), prog_bar=name == "agreement")

    # -- speculative decoding of held-out prompts --------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.log_speculative("start")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log_speculative("val")

    def on_test_epoch_end(self) -> None:
        self.log_speculative("test")

    def log_speculative(self, stage: str) -> None:
        prompts = self.held_out_prompts()
        if not prompts:
            return
        report = evaluate_speculative(self.teacher, self.student, prompts, **self.decoding)
        if report.lossless < 1.0:  # greedy verification cannot change the output: this is a bug, say so loudly
            rank_zero_warn(
                f"{stage}: speculative decoding differed from greedy on {1 - report.lossless:.0%} of prompts"
            )
        for name in ("accepted_length", "speedup", "lossless"):
            self.log(f"{stage}/{name}", getattr(report, name), prog_bar=name == "accepted_length")

    def held_out_prompts(self, data: Any = None) -> list[Batch]:
        """The first `prompt_tokens` tokens of the first `prompts` validation rows long enough to hold them, from
        `data` (default: the trainer's datamodule)."""
        if data is None:
            trainer = self._trainer  # None outside a Trainer (Lightning's `trainer` property raises)
            data = trainer.datamodule if trainer is not None else None
        if data is None:
            return []
        prompts = prompts_from_rows(data.val_set, self.prompt_count, self.prompt_tokens)
        return [{k: v.to(self.device) for k, v in prompt.items()} for prompt in prompts]


def at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`x` `[B, T, ...]` at each row's `positions` `[B, T']`: `[B, T', ...]` (no index as large as the result)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], positions]


def check_data(data: Any, settings: Any) -> None:
    """The target reads rows by their attention mask alone: one conversation per row."""
    if "position_ids" in getattr(data.train_set, "tensors", {}):
        raise DistillError("data.packing: task draft_distill reads one conversation per row; set data.packing=false")


def build(ctx: BuildContext) -> DraftDistillTask:
    """A draft for the target (the teacher): sized from it; its embeddings and head stay the target's."""
    if not isinstance(ctx.data, TokenData):
        raise DistillError(f"data: task draft_distill reads token rows; {ctx.recipe.data['name']} has none")
    target = ctx.teacher
    draft = ctx.model_from_spec("student", target=target)
    settings: SpeculativeSettings = ctx.settings
    return DraftDistillTask(
        draft, target, ctx.objective(), **vars(settings), eos_id=ctx.data.tokenizer.eos_id, **ctx.common()
    )


SPEC = register_task(
    TaskSpec(
        name="draft_distill",
        description="an EAGLE-style draft for speculative decoding, distilled online from the frozen target",
        build=build,
        check_data=check_data,
        monitor=("agreement", "max"),
        summary=(
            SummaryRow("draft loss", "loss"),
            SummaryRow("next-token agreement with the target", "agreement", percent=True),
            SummaryRow("speculative decoding: accepted length (tokens/round)", "accepted_length"),
            SummaryRow("speculative decoding: speedup over greedy", "speedup"),
            SummaryRow("speculative decoding: lossless prompts", "lossless", percent=True),
        ),
        frozen={"teacher": FrozenRole("the target model the draft speculates for")},
        objective="draft_distill",
        teacher_task="causal_lm",  # a target trained from `teacher.train` learns the text
        settings=SpeculativeSettings,
        section="speculative",
    )
)
