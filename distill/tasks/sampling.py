"""Sampling a model's responses to prompts, seeded, stopping where a chat model ends its turn.

A chat model ends an answer with its template's end of turn (`<|im_end|>` for Qwen, `<|eot_id|>` for Llama 3), which is
not always the tokenizer's eos, and may take several tokens (the `bytes` tokenizer spells `<|im_end|>` in ten). A
response therefore ends at the first of: the eos, any one-token stop (both handed to `generate` as its eos ids), or
the end of any longer stop sequence (`StopSequences`, a stopping criterion that looks at the generated tokens only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

Stops = Sequence[Sequence[int]]


def _stopping_criterion() -> type:
    from transformers import StoppingCriteria

    class StopSequences(StoppingCriteria):
        """Done once a row's generated tokens (after `start`) end with one of `sequences`."""

        def __init__(self, sequences: Stops, start: int) -> None:
            self.sequences = [torch.tensor(list(s)) for s in sequences]
            self.start = start

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            generated = input_ids.shape[1] - self.start
            for sequence in self.sequences:
                if len(sequence) <= generated:
                    tail = input_ids[:, -len(sequence) :]
                    done |= (tail == sequence.to(input_ids.device)).all(dim=1)
            return done

    return StopSequences


def response_end(tokens: list[int], eos_ids: Sequence[int], stops: Stops) -> int:
    """Where a generated response ends: just after its first eos id or complete stop sequence; its length when it
    has neither (it ran to max_new_tokens)."""
    for end in range(1, len(tokens) + 1):
        if tokens[end - 1] in eos_ids:
            return end
        if any(len(stop) <= end and tokens[end - len(stop) : end] == list(stop) for stop in stops):
            return end
    return len(tokens)


@torch.no_grad()
def generate(
    model: nn.Module,
    rows: list[list[int]],
    sampling: Any,
    pad_id: int,
    eos_id: int,
    seed: int,
    stops: Stops = (),
) -> list[list[int]]:
    """`model`'s response to each prompt in `rows`, sampled with `seed` (`sampling`: `SamplingSettings`), ending
    with the eos or stop sequence that stopped it (none when it ran to `sampling.max_new_tokens`)."""
    device = next(model.parameters()).device
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):  # left-padded: every prompt ends where generation starts
        ids[i, width - len(row) :] = torch.tensor(row, device=device)
        mask[i, width - len(row) :] = 1
    eos_ids = [eos_id, *(stop[0] for stop in stops if len(stop) == 1)]
    longer = [stop for stop in stops if len(stop) > 1]
    extra: dict[str, Any] = {}
    if longer:
        from transformers import StoppingCriteriaList

        extra["stopping_criteria"] = StoppingCriteriaList([_stopping_criterion()(longer, width)])
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
                eos_token_id=eos_ids if len(eos_ids) > 1 else eos_id,
                **sampling.generate_kwargs(),
                **extra,
            )
    finally:
        model.train(training)
    return [row[: response_end(row, eos_ids, longer)] for row in out[:, width:].tolist()]
