"""Speculative decoding with an EAGLE-style draft, greedy verification (docs/methods.md, section 8).

Each round the draft proposes `depth` tokens one after another (a chain), reading its own predicted features after
the first; the target scores the last emitted token and the proposals in one forward pass and keeps the longest
prefix that matches its own greedy choice, plus its next token. The output is therefore the target's greedy output,
token for token (lossless); `evaluate_speculative` checks that on every prompt and measures the accepted length
(tokens per round) and the wall-clock speedup over plain greedy decoding with the same KV cache.

Batch size 1 (one prompt at a time), as speculative decoding is measured. The target is a transformers causal LM
or LLaVA-style VLM (extra prompt inputs such as `pixel_values` go to its first forward pass only).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.models.draft import EagleDraft, KVCache
from distill.models.vlm import VISION_INPUTS


@dataclass
class TargetPass:
    features: torch.Tensor  # (1, T, H): the LM head's input at each new position
    logits: torch.Tensor  # (1, T, V)
    embeddings: torch.Tensor  # (1, T, H): the language model's input embeddings (image features included)


class Target:
    """A frozen transformers model with its KV cache: forward passes that continue where the last one stopped."""

    def __init__(self, model: nn.Module) -> None:
        from transformers import DynamicCache

        self.model = model
        # transformers 5 renamed `past_key_values` to `cache`; pass it under the name this release takes
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.cache = DynamicCache()
        self.embed = model.get_input_embeddings()
        self.head = model.get_output_embeddings()

    def __len__(self) -> int:
        return self.cache.get_seq_length()

    def forward(self, ids: torch.Tensor, features: bool = True, **extra: Any) -> TargetPass:
        out = self.model(
            input_ids=ids, use_cache=True, output_hidden_states=features, **{self.cache_argument: self.cache}, **extra
        )
        if not features:
            return TargetPass(out.logits, out.logits, out.logits)  # plain decoding reads the logits only
        return TargetPass(out.hidden_states[-1], out.logits, out.hidden_states[0])

    def crop(self, length: int) -> None:
        """Keep the first `length` cached positions (a negative count removes tokens in every transformers release)."""
        extra = len(self) - length
        if extra > 0:
            self.cache.crop(-extra)


def stop_at(tokens: list[int], limit: int, eos_id: int | None) -> tuple[list[int], bool]:
    """`tokens` cut at `limit` or just after the first eos; and whether generation is over."""
    if eos_id is not None and eos_id in tokens[:limit]:
        return tokens[: tokens.index(eos_id) + 1], True
    return tokens[:limit], len(tokens) >= limit


@torch.inference_mode()
def greedy_decode(
    model: nn.Module, prompt: dict[str, torch.Tensor], max_new_tokens: int, eos_id: int | None = None
) -> list[int]:
    """The target's own greedy output: one token per forward pass, with its KV cache."""
    target = Target(model)
    ids, extra = prompt["input_ids"], {k: v for k, v in prompt.items() if k != "input_ids"}
    logits = target.forward(ids, features=False, **extra).logits
    tokens: list[int] = []
    while True:
        tokens.append(int(logits[0, -1].argmax()))
        tokens, done = stop_at(tokens, max_new_tokens, eos_id)
        if done:
            return tokens
        logits = target.forward(logits.new_tensor([[tokens[-1]]], dtype=torch.long), features=False).logits


@dataclass
class Decoded:
    tokens: list[int]
    rounds: int  # verification rounds; the first token (from the prompt's forward pass) is in none of them
    round_tokens: int  # tokens the rounds emitted (accepted drafts + 1 each), within the limit
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted in each round

    def marked(self, decode: Callable[[list[int]], str], left: str = "[", right: str = "]") -> str:
        """The decoded text with each round's accepted draft tokens between `left` and `right`; the target's own
        tokens (the first one, and the one that ends each round) unmarked."""
        parts, position = [decode(self.tokens[:1])], 1
        for accepted in self.accepted:
            drafted = self.tokens[position : position + accepted]
            own = self.tokens[position + accepted : position + accepted + 1]
            parts += [f"{left}{decode(drafted)}{right}" if drafted else "", decode(own)]
            position += accepted + 1
        return "".join(parts)


@torch.inference_mode()
def speculative_decode(
    model: nn.Module,
    draft: EagleDraft,
    prompt: dict[str, torch.Tensor],
    max_new_tokens: int,
    depth: int,
    eos_id: int | None = None,
) -> Decoded:
    """Greedy speculative decoding with a chain draft of `depth` tokens per round."""
    target, draft_cache = Target(model), KVCache()
    ids, extra = prompt["input_ids"], {k: v for k, v in prompt.items() if k != "input_ids"}
    scored = target.forward(ids, **extra)
    tokens, done = stop_at([int(scored.logits[0, -1].argmax())], max_new_tokens, eos_id)
    # the draft reads (f_t, embedding of x_{t+1}) for every position the target has scored
    first = target.embed(torch.tensor([tokens], device=ids.device))
    next_embeddings = torch.cat([scored.embeddings[:, 1:], first], dim=1)
    features, next_embeddings, kept = draft.compress(scored.features, next_embeddings, ids)
    pooled_away = 0 if kept is None else ids.shape[1] - len(kept)  # the draft holds fewer positions than the target
    rounds = round_tokens = 0
    accepted_per_round: list[int] = []
    while not done:
        drafted = draft_chain(draft, draft_cache, target, features, next_embeddings, depth)
        block = torch.tensor([[tokens[-1], *drafted]], device=ids.device)
        start = len(target)
        scored = target.forward(block)
        choices = scored.logits[0].argmax(-1).tolist()  # the target's next token after each of the block's tokens
        accepted = 0
        while accepted < depth and drafted[accepted] == choices[accepted]:
            accepted += 1
        emitted = [*drafted[:accepted], choices[accepted]]
        target.crop(start + accepted + 1)
        draft_cache.crop(start - pooled_away)  # drop the positions the draft read from its own predictions
        before = len(tokens)
        tokens, done = stop_at(tokens + emitted, max_new_tokens, eos_id)
        rounds, round_tokens = rounds + 1, round_tokens + len(tokens) - before
        accepted_per_round.append(min(accepted, len(tokens) - before))  # (the limit may cut a round short)
        features = scored.features[:, : accepted + 1]
        next_embeddings = target.embed(block.new_tensor([emitted]))
    return Decoded(tokens, rounds, round_tokens, accepted_per_round)


def draft_chain(
    draft: EagleDraft,
    cache: KVCache,
    target: Target,
    features: torch.Tensor,
    next_embeddings: torch.Tensor,
    depth: int,
) -> list[int]:
    """Read the newly scored positions, then propose `depth` greedy tokens, feeding back the draft's own features."""
    predicted = draft(features, next_embeddings, cache)[:, -1:]  # (1, 1, H): f^ of the position after the last
    drafted: list[int] = []
    for step in range(depth):
        drafted.append(int(target.head(predicted)[0, -1].argmax()))
        if step + 1 < depth:
            embedding = target.embed(torch.tensor([[drafted[-1]]], device=predicted.device))
            predicted = draft(predicted, embedding, cache)
    return drafted


def prompts_from_rows(rows: Any, count: int, prompt_tokens: int) -> list[dict[str, torch.Tensor]]:
    """The first `prompt_tokens` tokens (and the image inputs) of the first `count` rows long enough to hold them,
    each with a batch dimension of 1: held-out prompts for `evaluate_speculative`."""
    prompts = []
    for i in range(len(rows)):
        if len(prompts) == count:
            break
        row = rows[i]
        if int(row["attention_mask"][:prompt_tokens].sum()) == prompt_tokens:
            prompt = {"input_ids": row["input_ids"][None, :prompt_tokens]}
            prompts.append(prompt | {k: row[k][None] for k in VISION_INPUTS if k in row})
    return prompts


@dataclass
class SpeculativeReport:
    accepted_length: float  # tokens per verification round (accepted drafts + 1), over all prompts
    speedup: float  # wall-clock time of plain greedy decoding / speculative decoding, over all prompts
    lossless: float  # share of prompts whose output equals the target's greedy output exactly
    prompts: int
    tokens: int


def evaluate_speculative(
    model: nn.Module,
    draft: EagleDraft,
    prompts: list[dict[str, torch.Tensor]],
    max_new_tokens: int,
    depth: int,
    eos_id: int | None = None,
) -> SpeculativeReport:
    """Decode every prompt both ways, check the outputs are equal and time both (after one warm-up of each)."""
    was_training = draft.training
    draft.eval()
    greedy_decode(model, prompts[0], 2, eos_id)
    speculative_decode(model, draft, prompts[0], 2, depth, eos_id)
    greedy_time = speculative_time = 0.0
    same = rounds = round_tokens = tokens = 0
    for prompt in prompts:
        started = time.perf_counter()
        reference = greedy_decode(model, prompt, max_new_tokens, eos_id)
        greedy_time += time.perf_counter() - started
        started = time.perf_counter()
        decoded = speculative_decode(model, draft, prompt, max_new_tokens, depth, eos_id)
        speculative_time += time.perf_counter() - started
        same += decoded.tokens == reference
        rounds, round_tokens, tokens = (
            rounds + decoded.rounds,
            round_tokens + decoded.round_tokens,
            tokens + len(reference),
        )
    draft.train(was_training)
    return SpeculativeReport(
        accepted_length=round_tokens / max(rounds, 1),
        speedup=greedy_time / max(speculative_time, 1e-9),
        lossless=same / len(prompts),
        prompts=len(prompts),
        tokens=tokens,
    )
