"""AlignDistil (docs/methods.md, section 7): distill a token-adaptive teacher built from a DPO model and a second
frozen model (the reverse-DPO model, or the reference) into the student, off-policy or on-policy
(`task: align_distil`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from distill.config.schema import setting
from distill.data.interface import TokenData
from distill.errors import DistillError
from distill.models.causal_lm import output_rows
from distill.tasks.base import DistillationTask, mean_metrics
from distill.tasks.context import BuildContext
from distill.tasks.dpo import pair_logps
from distill.tasks.lm_outputs import HeadSettings, LogitsMode, chunk_blocker, use_chunks
from distill.tasks.spec import FrozenRole, SummaryRow, TaskSpec, register_task
from losses import AlignDistilLoss
from losses.chunked import rows_per_chunk
from losses.teacher_rows import TeacherHead

Batch = dict[str, torch.Tensor]
MODELS = ("student", "teacher", "second_teacher")  # the teacher is the DPO model


@dataclass
class AlignDistilSettings(HeadSettings):
    """The recipe's `align_distil:` section."""

    SECTION: ClassVar[str] = "align_distil"
    mode: Literal["off_policy", "on_policy"] = setting(
        "off_policy", "distill on the dataset's chosen responses or on samples"
    )
    temperature: float = setting(1.0, "on-policy sampling temperature")
    top_p: float = setting(1.0, "on-policy nucleus sampling")
    max_new_tokens: int = setting(64, "on-policy response length")


def distilled_positions(labels: torch.Tensor) -> torch.Tensor:
    """`[B, T-1]` mask of the shifted positions to distill: response tokens, without each row's first one."""
    mask = labels[:, 1:] != -100
    first = mask & (mask.cumsum(dim=1) == 1)
    return mask & ~first


def logits_of(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    # positions from the attention mask, so left-padded (generated) rows get the positions generate() used
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention, position_ids=positions).logits


def hidden_of(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """The final hidden states `logits_of` would put through the head (the backbone alone)."""
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return model.base_model(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state


class AlignDistilTask(DistillationTask):
    """The student learns from `objective(student_logits, dpo_logits, second_logits, mask)`.

    Off-policy it reads the dataset's chosen responses; on-policy it samples one response per prompt with
    `generate` (the student, no gradient) and distills on that. Validation and test report, on held-out pairs,
    each model's preference accuracy (share of pairs where it gives the chosen response the higher log-probability)
    and mean log-probability margin: `student_*`, `dpo_*` and `second_*`. Given the `reference` model (the
    student's starting point), also its own `reference_pref_acc` and `reference_margin`, and for the other three the
    implicit reward margin `beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)))` (`*_reward_margin`,
    its mean) and the share of pairs where it is positive (`*_reward_acc`).

    Args:
        student: the model being aligned.
        teacher: the frozen DPO model.
        second_teacher: the frozen reverse-DPO model (adaptive variant) or reference model (fixed variants).
        reference: the frozen reference model, for the reward metrics only; None: not reported.
        objective: the AlignDistil loss.
        mode: "off_policy" or "on_policy".
        temperature: on-policy sampling temperature.
        top_p: on-policy nucleus sampling.
        max_new_tokens: on-policy response length.
        eos_id: ends a sampled response; pad_id fills after it.
        pad_id: padding id for sampled rows.
        common: `optimizer`, `scheduler`, `sources`, `recipe` and `data_record`, as every task takes them
            (`DistillationTask`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        second_teacher: nn.Module,
        objective: AlignDistilLoss,
        mode: Literal["off_policy", "on_policy"] = "off_policy",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        eos_id: int = 0,
        pad_id: int = 0,
        reference: nn.Module | None = None,
        logits: LogitsMode = "auto",
        chunk_size: int | None = None,
        **common: Any,
    ) -> None:
        if teacher is None or second_teacher is None:
            raise ValueError("AlignDistil needs the DPO model (teacher) and a second model (second_teacher)")
        frozen = {"teacher": teacher, "second_teacher": second_teacher, "reference": reference}
        super().__init__(student, frozen, **common)
        self.logits_mode = logits
        self.chunked()  # refuses `chunked` now where it cannot run
        self.chunk_size = chunk_size or rows_per_chunk(output_rows(student))
        self.objective = objective
        self.mode = mode
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        self.eos_id, self.pad_id = eos_id, pad_id
        names = [f"{m}_{what}" for m in ("student", "dpo", "second", "reference") for what in ("pref_acc", "margin")]
        names += [f"{m}_{what}" for m in ("student", "dpo", "second") for what in ("reward_acc", "reward_margin")]
        self.means = mean_metrics(names)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.student(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.no_grad()
    def sample(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sampled response per (left-padded) prompt: ids, attention mask, labels (-100 off the response)."""
        prompt, prompt_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        was_training = self.student.training
        self.student.eval()
        ids = self.student.generate(
            input_ids=prompt,
            attention_mask=prompt_mask,
            do_sample=True,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            **self.sampling,
        )
        self.student.train(was_training)
        response = ids[:, prompt.shape[1] :]
        ended = (response == self.eos_id).int().cumsum(dim=1)
        alive = (ended == 0) | ((ended == 1) & (response == self.eos_id))  # up to and including the first eos
        attention = torch.cat([prompt_mask, alive.long()], dim=1)
        labels = torch.cat([torch.full_like(prompt, -100), torch.where(alive, response, -100)], dim=1)
        return ids, attention, labels

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self.mode == "on_policy":
            ids, attention, labels = self.sample(batch)
        else:
            ids, attention, labels = batch["chosen_input_ids"], batch["chosen_attention_mask"], batch["chosen_labels"]
        if self.chunked():
            loss, inputs = self.chunked_loss(ids, attention, distilled_positions(labels))
            self.last_parts = {"align_distil": loss, **inputs}  # named if not finite: whose hidden states or head
        else:
            student_logits = logits_of(self.student, ids, attention)[:, :-1]
            with torch.no_grad():
                dpo_logits = logits_of(self.teacher, ids, attention)[:, :-1]
                second_logits = logits_of(self.second_teacher, ids, attention)[:, :-1]
            loss = self.objective(student_logits, dpo_logits, second_logits, distilled_positions(labels))
            # named if the loss is not finite: which model's logits went bad (references only; dropped after)
            logits = {
                "student_logits": student_logits.detach(),
                "dpo_logits": dpo_logits,
                "second_logits": second_logits,
            }
            self.last_parts = {"align_distil": loss, **logits}
        self.log_training({"loss": loss, "align_distil": loss})
        return loss

    def chunked(self) -> bool:
        """Whether this step runs without full logits (a head sharded by FSDP is only known at run time)."""
        models = (self.student, self.teacher, self.second_teacher)
        return use_chunks(self.logits_mode, "align_distil", map(chunk_blocker, models))

    def chunked_loss(
        self, ids: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective from the three models' hidden states through their heads, a chunk of tokens at a time; also
        each model's hidden states and head weight (references, to name the one that is not finite)."""
        hidden = hidden_of(self.student, ids, attention)[:, :-1]
        inputs = {"student_hidden": hidden.detach(), "student_head": self.student.get_output_embeddings().weight}
        with torch.no_grad():
            teachers = []
            for short, model in (("dpo", self.teacher), ("second", self.second_teacher)):
                head = model.get_output_embeddings()
                teachers.append(TeacherHead(hidden_of(model, ids, attention)[:, :-1], head.weight, head.bias))
                inputs |= {f"{short}_hidden": teachers[-1].hidden, f"{short}_head": head.weight}
        head = self.student.get_output_embeddings()
        loss = self.objective.from_heads((hidden, head.weight, head.bias), *teachers, mask, self.chunk_size)
        return loss, inputs

    def evaluate_batch(self, batch: Batch, batch_idx: int, stage: str) -> None:
        reference = pair_logps(self.reference, batch) if self.reference is not None else None
        if reference is not None:
            self.record(stage, "reference", "pref_acc", (reference[0] > reference[1]).float())
            self.record(stage, "reference", "margin", reference[0] - reference[1])
        for short, name in zip(("student", "dpo", "second"), MODELS, strict=True):
            chosen, rejected = pair_logps(getattr(self, name), batch)
            self.record(stage, short, "pref_acc", (chosen > rejected).float())
            self.record(stage, short, "margin", chosen - rejected)
            if reference is not None:
                reward = self.objective.beta * ((chosen - reference[0]) - (rejected - reference[1]))
                self.record(stage, short, "reward_acc", (reward > 0).float())
                self.record(stage, short, "reward_margin", reward)

    def record(self, stage: str, model: str, what: str, value: torch.Tensor) -> None:
        prog_bar = (model, what) == ("student", "pref_acc")
        self.log_mean(stage, f"{model}_{what}", value.mean(), value.numel(), prog_bar=prog_bar)


def build(ctx: BuildContext) -> AlignDistilTask:
    data = ctx.data
    if not isinstance(data, TokenData):
        raise DistillError(f"data: task align_distil reads preference pairs; {ctx.recipe.data['name']} has none")
    student = ctx.student()
    settings: AlignDistilSettings = ctx.settings
    return AlignDistilTask(
        student,
        ctx.teacher,
        ctx.model("second_teacher"),
        ctx.objective(),
        mode=settings.mode,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        logits=settings.logits,
        chunk_size=settings.chunk_size,
        eos_id=data.tokenizer.eos_id,
        pad_id=data.pad_id,
        reference=reference_model(student, ctx.init),
        **ctx.common(),
    )


def reference_model(student: nn.Module, init: str | None) -> nn.Module | None:
    """The reference model of the reward metrics: a copy of the student as it starts, when it starts from weights
    read from a file (`init: reference`, resolved to its path, or a path); else None (not reported)."""
    if init is None or init == "teacher":
        return None
    return copy.deepcopy(student)


SPEC = register_task(
    TaskSpec(
        name="align_distil",
        description="AlignDistil: a token-adaptive teacher from a DPO model and a second model, distilled into the "
        "student",
        build=build,
        monitor=("student_pref_acc", "max"),
        summary=(
            SummaryRow("preference accuracy, student", "student_pref_acc", percent=True),
            SummaryRow("preference accuracy, DPO model", "dpo_pref_acc", percent=True),
            SummaryRow("preference accuracy, second model", "second_pref_acc", percent=True),
            SummaryRow("preference accuracy, reference", "reference_pref_acc", percent=True),
            SummaryRow("log-prob margin chosen - rejected, student", "student_margin"),
            SummaryRow("log-prob margin chosen - rejected, DPO model", "dpo_margin"),
            SummaryRow("log-prob margin chosen - rejected, reference", "reference_margin"),
            SummaryRow("implicit reward accuracy, student", "student_reward_acc", percent=True),
            SummaryRow("mean implicit reward margin, student", "student_reward_margin"),
            SummaryRow("implicit reward accuracy, DPO model", "dpo_reward_acc", percent=True),
            SummaryRow("mean implicit reward margin, DPO model", "dpo_reward_margin"),
        ),
        frozen={
            "teacher": FrozenRole("the DPO model"),
            "second_teacher": FrozenRole("the reverse-DPO model or the reference"),
        },
        objective="align_distil",
        settings=AlignDistilSettings,
    )
)
