"""Whose responses a causal-LM step trains on: the data's (off-policy), the student's own samples (on-policy, and
mixed with GKD's lambda), or the teacher's, generated once and stored (sequence-level KD).

A row's prompt is everything before its last trained stretch: a pair's prompt, or a conversation's whole history up
to its final assistant turn (as TRL's GKD samples it), earlier answers included and not trained. The final answer is
replaced by a generated one, labelled, and the row cut to the row length; generation stops at the tokenizer's eos or
the chat template's end of turn (`distill.tasks.sampling`). Sampling is seeded from (seed, epoch, batch index), so a
run resumed from a checkpoint samples exactly what the uninterrupted run did, and which batches a mixed run samples
is drawn from the same key (per batch: with `student_fraction` 0.5 about half the batches are the student's, all of
a batch's rows alike). With two tokenizers, responses are decoded by the tokenizer of the model that wrote them and
encoded again by the other's, after each side's own prompt of the same turn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from distill.config.schema import setting
from distill.data.text_rows import IGNORE
from distill.errors import DistillError
from distill.tasks.sampling import Stops, generate

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


def trained_stretches(labels: torch.Tensor) -> list[tuple[int, int]]:
    """The `(start, end)` of each run of trained positions of one row's labels `[T]`, in order."""
    trained = (labels != IGNORE).tolist()
    stretches = []
    for position, value in enumerate(trained):
        if value and (position == 0 or not trained[position - 1]):
            stretches.append([position, position + 1])
        elif value:
            stretches[-1][1] = position + 1
    return [(start, end) for start, end in stretches]


def prompts(batch: Batch, prefix: str = "", turns: Sequence[int] | None = None) -> list[list[int]]:
    """Each row's prompt: its tokens before its last trained stretch (a conversation's final answer), or before
    stretch `turns[row]` when given; a row with nothing trained keeps all its tokens."""
    ids, labels, mask = (batch[f"{prefix}{key}"] for key in ("input_ids", "labels", "attention_mask"))
    found = []
    for row in range(len(ids)):
        stretches = trained_stretches(labels[row])
        turn = turns[row] if turns is not None else -1
        end = stretches[turn][0] if stretches else int(mask[row].sum())
        found.append(ids[row, :end].tolist())
    return found


def shared_turns(batch: Batch) -> list[int] | None:
    """With the teacher's own tokens, the answer each row samples on both sides: the last one both sides hold (a
    side whose row was cut shorter may have lost the final one); None with one tokenization."""
    if "teacher_labels" not in batch:
        return None
    counts = [
        min(len(trained_stretches(student)), len(trained_stretches(teacher)))
        for student, teacher in zip(batch["labels"], batch["teacher_labels"], strict=True)
    ]
    return [max(count - 1, 0) for count in counts]


def check_prompts(labels: torch.Tensor, what: str) -> None:
    """Rows to sample responses for must start with a prompt (an untrained position before the first trained)."""
    first = labels[:, 0] != IGNORE
    if bool(first.any()):
        raise DistillError(
            f"causal_lm.mode {what} samples responses to prompts, and {int(first.sum())} training rows have none "
            "(plain or packed text): use prompt/response pairs or conversations"
        )


def rows_with_responses(
    prompt_rows: list[list[int]], responses: list[list[int]], length: int, pad_id: int, device: torch.device
) -> Batch:
    """Rows `[prompt, response]` cut to `length`, labelled on the response, right-padded to the longest of them."""
    length = min(
        length, max(len(prompt) + len(response) for prompt, response in zip(prompt_rows, responses, strict=True))
    )
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
    """The two sides' tokenizers (the same object when teacher and student share one), the token sequences that end
    an answer on each side besides the eos (a chat template's end of turn), and each side's row length (None: the
    batch's width)."""

    student: Any
    teacher: Any
    stops: dict[str, list[list[int]]] = field(default_factory=dict)
    row_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        return self.student is self.teacher

    def stops_of(self, side: str) -> list[list[int]]:
        return self.stops.get(side, [])


def with_responses(batch: Batch, responses: list[list[int]], written_by: str, tokenizers: Tokenizers) -> Batch:
    """`batch` with each row's last answer replaced by `responses` (in the tokens of `written_by`: 'student' or
    'teacher'), on both sides when the teacher reads its own tokenization."""
    device = batch["input_ids"].device
    sides = ("", "teacher_") if "teacher_input_ids" in batch else ("",)
    turns = shared_turns(batch)
    out = {key: value for key, value in batch.items() if key not in _row_keys(sides)}
    for prefix in sides:
        side = "teacher" if prefix else "student"
        tokenizer = getattr(tokenizers, side)
        if side == written_by or tokenizers.shared:
            converted = responses
        else:  # re-tokenized: the text the other model wrote, in this side's tokens, ended as this side ends answers
            source = getattr(tokenizers, written_by)
            ends = (tokenizers.stops_of(written_by), tokenizers.stops_of(side))
            converted = [retokenized(response, source, tokenizer, *ends) for response in responses]
        length = tokenizers.row_lengths.get(side, batch[f"{prefix}input_ids"].shape[1])
        rows = rows_with_responses(prompts(batch, prefix, turns), converted, length, tokenizer.pad_id, device)
        out.update({f"{prefix}{key}": value for key, value in rows.items()})
    return out


def retokenized(
    response: list[int], source: Any, target: Any, source_stops: Stops = (), target_stops: Stops = ()
) -> list[int]:
    """A response written in `source`'s tokens, in `target`'s: its text encoded again, ended the way `target`'s side
    ends an answer (its template's end of turn, else its eos) when it ended with `source`'s eos or end of turn."""
    ending = next((stop for stop in ([source.eos_id], *source_stops) if _ends_with(response, stop)), None)
    text = response[: len(response) - len(ending)] if ending is not None else response
    closing = list(target_stops[0]) if target_stops else [target.eos_id]
    return target.encode(source.decode(text)) + (closing if ending is not None else [])


def _ends_with(tokens: list[int], stop: Sequence[int]) -> bool:
    return 0 < len(stop) <= len(tokens) and tokens[len(tokens) - len(stop) :] == list(stop)


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
        stops = self.tokenizers.stops_of("student")
        rows = prompts(batch, "", shared_turns(batch))
        responses = generate(student, rows, self.sampling, tokenizer.pad_id, tokenizer.eos_id, key, stops)
        return with_responses(batch, responses, "student", self.tokenizers)

    def _teacher_responses(self, batch: Batch, teacher: nn.Module | None) -> Batch:
        stored = self.store.read(batch["index"])
        if stored is None:  # the first run generates them, once
            if teacher is None:
                raise DistillError("causal_lm.responses: responses are missing and the teacher is not loaded")
            prefix = "teacher_" if "teacher_input_ids" in batch else ""
            tokenizer, stops = self.tokenizers.teacher, self.tokenizers.stops_of("teacher")
            key = draw_key(self.seed, 0, int(batch["index"][0]), "teacher responses")
            rows = prompts(batch, prefix, shared_turns(batch))
            found = generate(teacher, rows, self.sampling, tokenizer.pad_id, tokenizer.eos_id, key, stops)
            self.store.write(batch["index"], found)
            stored = self.store.read(batch["index"])
        return with_responses(batch, stored, "teacher", self.tokenizers)
