"""Whose responses a causal-LM step trains on: the data's (off-policy), the student's own samples (on-policy, and
mixed with GKD's lambda), or the teacher's, generated once and stored (sequence-level KD).

A batch of prompt/response rows (labels -100 on the prompt) keeps its prompts; the responses are replaced by
generated ones, labelled, and cut to the row length. Sampling is seeded from (seed, epoch, batch index), so a run
resumed from a checkpoint samples exactly what the uninterrupted run did, and which batches a mixed run samples is
drawn from the same key. With two tokenizers, responses are decoded by the tokenizer of the model that wrote them
and encoded again by the other's, after each side's own prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from distill.config.schema import setting
from distill.data.text_rows import IGNORE
from distill.errors import DistillError

Mode = Literal["off_policy", "on_policy", "mixed", "sequence"]
Batch = dict[str, torch.Tensor]


@dataclass
class SamplingSettings:
    """How responses are generated (`causal_lm.sampling`)."""

    max_new_tokens: int = setting(64, "tokens generated per response at most (eos ends one sooner)")
    temperature: float = setting(1.0, "sampling temperature; 0: greedy")
    top_k: int = setting(0, "sample among the k most likely tokens only; 0: all")
    top_p: float = setting(1.0, "nucleus sampling: the smallest set of tokens with this much probability; 1: all")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise DistillError(f"causal_lm.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise DistillError("causal_lm.sampling: temperature >= 0, top_k >= 0 and 0 < top_p <= 1 are required")

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


def draw_key(seed: int, epoch: int, batch_idx: int, what: str) -> int:
    """A 63-bit seed that depends only on its arguments."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{batch_idx}:{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def uses_student_samples(mode: Mode, student_fraction: float, seed: int, epoch: int, batch_idx: int) -> bool:
    """Whether this batch trains on the student's samples: always on-policy, never off-policy, and for `mixed` with
    probability `student_fraction` (GKD's lambda), drawn from (seed, epoch, batch)."""
    if mode == "on_policy":
        return True
    if mode != "mixed":
        return False
    return draw_key(seed, epoch, batch_idx, "mixed") / 2**63 < student_fraction


def prompts(batch: Batch, prefix: str = "") -> list[list[int]]:
    """Each row's prompt: its tokens before the first trained position."""
    ids, labels, mask = (batch[f"{prefix}{key}"] for key in ("input_ids", "labels", "attention_mask"))
    found = []
    for row in range(len(ids)):
        trained = (labels[row] != IGNORE).nonzero()
        end = int(trained[0]) if len(trained) else int(mask[row].sum())
        found.append(ids[row, :end].tolist())
    return found


def check_prompts(labels: torch.Tensor, what: str) -> None:
    """Rows to sample responses for must start with a prompt (an untrained position before the first trained)."""
    first = labels[:, 0] != IGNORE
    if bool(first.any()):
        raise DistillError(
            f"causal_lm.mode {what} samples responses to prompts, and {int(first.sum())} training rows have none "
            "(plain or packed text): use prompt/response pairs or conversations"
        )


@torch.no_grad()
def generate(
    model: nn.Module, rows: list[list[int]], sampling: SamplingSettings, pad_id: int, eos_id: int, seed: int
) -> list[list[int]]:
    """`model`'s response to each prompt in `rows` (ending with eos when it stopped), sampled with `seed`."""
    device = next(model.parameters()).device
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):  # left-padded: every prompt ends where generation starts
        ids[i, width - len(row) :] = torch.tensor(row, device=device)
        mask[i, width - len(row) :] = 1
    training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
                **sampling.generate_kwargs(),
            )
    finally:
        model.train(training)
    responses = []
    for row in out[:, width:].tolist():
        responses.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return responses


def rows_with_responses(
    prompt_rows: list[list[int]], responses: list[list[int]], length: int, pad_id: int, device: torch.device
) -> Batch:
    """Right-padded rows `[prompt, response]` cut to `length`, labelled on the response."""
    ids = torch.full((len(prompt_rows), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for i, (prompt, response) in enumerate(zip(prompt_rows, responses, strict=True)):
        row = (prompt + response)[:length]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(prompt) : len(row)] = ids[i, len(prompt) : len(row)]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


@dataclass
class Tokenizers:
    """The two sides' tokenizers (the same object when teacher and student share one)."""

    student: Any
    teacher: Any

    @property
    def shared(self) -> bool:
        return self.student is self.teacher


def with_responses(batch: Batch, responses: list[list[int]], written_by: str, tokenizers: Tokenizers) -> Batch:
    """`batch` with its responses replaced by `responses` (in the tokens of `written_by`: 'student' or 'teacher'),
    on both sides when the teacher reads its own tokenization."""
    device = batch["input_ids"].device
    sides = ("", "teacher_") if "teacher_input_ids" in batch else ("",)
    out = {key: value for key, value in batch.items() if key not in _row_keys(sides)}
    for prefix in sides:
        side = "teacher" if prefix else "student"
        tokenizer = getattr(tokenizers, side)
        if side == written_by or tokenizers.shared:
            converted = responses
        else:  # re-tokenized: the text the other model wrote, in this side's tokens, ended as this side ends rows
            source = getattr(tokenizers, written_by)
            converted = [retokenized(response, source, tokenizer) for response in responses]
        rows = rows_with_responses(
            prompts(batch, prefix), converted, batch[f"{prefix}input_ids"].shape[1], tokenizer.pad_id, device
        )
        out.update({f"{prefix}{key}": value for key, value in rows.items()})
    return out


def retokenized(response: list[int], source: Any, target: Any) -> list[int]:
    """A response written in `source`'s tokens, in `target`'s: its text encoded again, ending with `target`'s eos
    when it ended with `source`'s."""
    ended = bool(response) and response[-1] == source.eos_id
    return target.encode(source.decode(response)) + ([target.eos_id] if ended else [])


def _row_keys(sides: tuple[str, ...]) -> set[str]:
    return {f"{prefix}{key}" for prefix in sides for key in ("input_ids", "attention_mask", "labels")}


@dataclass
class ResponsePolicy:
    """Chooses, per training batch, whose responses it trains on (see the module's docstring)."""

    mode: Mode
    student_fraction: float
    sampling: SamplingSettings
    tokenizers: Tokenizers
    seed: int
    store: Any = None  # the teacher's stored responses (`teachers.response_store.ResponseStore`), for `sequence`

    def batch(self, batch: Batch, batch_idx: int, epoch: int, student: nn.Module, teacher: nn.Module | None) -> Batch:
        if self.mode == "sequence":
            return self._teacher_responses(batch, teacher)
        if not uses_student_samples(self.mode, self.student_fraction, self.seed, epoch, batch_idx):
            return batch
        tokenizer = self.tokenizers.student
        key = draw_key(self.seed, epoch, batch_idx, "student samples")
        responses = generate(student, prompts(batch), self.sampling, tokenizer.pad_id, tokenizer.eos_id, key)
        return with_responses(batch, responses, "student", self.tokenizers)

    def _teacher_responses(self, batch: Batch, teacher: nn.Module | None) -> Batch:
        stored = self.store.read(batch["index"])
        if stored is None:  # the first run generates them, once
            if teacher is None:
                raise DistillError("causal_lm.responses: responses are missing and the teacher is not loaded")
            prefix = "teacher_" if "teacher_input_ids" in batch else ""
            tokenizer = self.tokenizers.teacher
            key = draw_key(self.seed, 0, int(batch["index"][0]), "teacher responses")
            found = generate(teacher, prompts(batch, prefix), self.sampling, tokenizer.pad_id, tokenizer.eos_id, key)
            self.store.write(batch["index"], found)
            stored = self.store.read(batch["index"])
        return with_responses(batch, stored, "teacher", self.tokenizers)
