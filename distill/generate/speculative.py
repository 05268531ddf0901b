"""Speculative decoding with an EAGLE-style draft (docs/methods.md, sections 8 and 12).

Each round the draft grows a tree of candidate continuations of the last emitted token (EAGLE-2's dynamic tree,
`distill.generate.draft_tree`; a chain of `depth` tokens is the tree of `top_k = 1`), reading its own predicted
features; the target verifies the whole tree in one forward pass (a tree attention mask) and keeps the longest
path it agrees with, plus its own next token. Greedy verification gives the target's greedy output token for token
(lossless); with a temperature, each token is a draw from the target's own distribution. `evaluate_speculative`
checks greedy losslessness on every prompt and measures the accepted length (tokens per round) and the wall-clock
speedup over plain greedy decoding with the same KV cache. After each round both KV caches keep the prefix and the
accepted path only: the target's accepted entries are moved up behind the prefix, the draft's tree entries dropped
(it reads the accepted positions' true features next round); nothing of the prefix is computed again.

Batch size 1 (one prompt at a time), as speculative decoding is measured. The target is a transformers causal LM
or LLaVA-style VLM (extra prompt inputs such as `pixel_values` go to its first forward pass only) with sdpa or
eager attention (a tree mask is an arbitrary mask).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.generate.draft_tree import DraftTree, TreeShape, accepted_path, grow_tree, verification_inputs
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

    def keep(self, start: int, kept: list[int]) -> None:
        """Keep the cached positions before `start` and, after them, those at `start + i` for i in `kept` (in
        order): the accepted path of a verified tree moved up behind the prefix, in place."""
        if kept != list(range(len(kept))):
            positions, index = [start + i for i in kept], None
            for layer in cache_layers(self.cache):
                for name in ("keys", "values"):
                    tensor = getattr(layer, name)
                    # one copy to the device a round, not two a layer: a copy from the host waits for the GPU's queue
                    if index is None or index.device != tensor.device:
                        index = torch.tensor(positions, device=tensor.device)
                    tensor[..., start : start + len(kept), :] = tensor.index_select(-2, index)
        self.crop(start + len(kept))


def cache_layers(cache: Any) -> list[Any]:
    """The per-layer key/value holders of a transformers DynamicCache (`.keys` and `.values` `[B, heads, L, d]`)."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise DistillError(
            "speculative decoding with a draft tree needs transformers' DynamicCache of full-attention layers "
            "(transformers >= 4.56; no sliding-window layers)"
        )
    return layers


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
def sample_decode(
    model: nn.Module,
    prompt: dict[str, torch.Tensor],
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> list[int]:
    """The target's own sampled output at `temperature`: one draw from its distribution per forward pass."""
    target = Target(model)
    ids, extra = prompt["input_ids"], {k: v for k, v in prompt.items() if k != "input_ids"}
    logits = target.forward(ids, features=False, **extra).logits
    tokens: list[int] = []
    while True:
        tokens.append(draw(logits[0, -1:], temperature, generator)[0])
        tokens, done = stop_at(tokens, max_new_tokens, eos_id)
        if done:
            return tokens
        logits = target.forward(logits.new_tensor([[tokens[-1]]], dtype=torch.long), features=False).logits


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> list[int]:
    """One token per row of `logits` `[T, V]`: the argmax at temperature 0, else a draw from softmax(logits / T)."""
    if temperature == 0:
        return logits.argmax(-1).tolist()
    probabilities = (logits.float() / temperature).softmax(-1)
    if generator is not None and generator.device != probabilities.device:
        probabilities = probabilities.to(generator.device)
    return torch.multinomial(probabilities, 1, generator=generator)[:, 0].tolist()


@torch.inference_mode()
def speculative_decode(
    model: nn.Module,
    draft: EagleDraft,
    prompt: dict[str, torch.Tensor],
    max_new_tokens: int,
    depth: int,
    eos_id: int | None = None,
    top_k: int = 1,
    total_tokens: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> Decoded:
    """Speculative decoding with a draft tree of `depth` levels, `top_k` children per expanded node and
    `total_tokens` nodes verified per round (`top_k = 1`: a chain of `depth` tokens); greedy at `temperature` 0,
    else sampling from the target's distribution (draws from `generator`)."""
    shape = TreeShape(depth, top_k, total_tokens)
    check_tree_attention(model, shape)
    target, draft_cache = Target(model), KVCache()
    ids, extra = prompt["input_ids"], {k: v for k, v in prompt.items() if k != "input_ids"}
    scored = target.forward(ids, **extra)
    tokens, done = stop_at(draw(scored.logits[0, -1:], temperature, generator), max_new_tokens, eos_id)
    # the draft reads (f_t, embedding of x_{t+1}) for every position the target has scored
    first = target.embed(torch.tensor([tokens], device=ids.device))
    next_embeddings = torch.cat([scored.embeddings[:, 1:], first], dim=1)
    features, next_embeddings, _ = draft.compress(scored.features, next_embeddings, ids)
    rounds = round_tokens = 0
    accepted_per_round: list[int] = []
    while not done:
        root_feature = draft(features, next_embeddings, draft_cache)[:, -1:]  # (1, 1, H): f^ at the root's position
        prefix = len(draft_cache)
        tree = grow(draft, draft_cache, target, root_feature, shape)
        start = len(target)  # the root's position
        block, positions, mask = verification_inputs(tree, tokens[-1], start, scored.logits.dtype, ids.device)
        scored = target.forward(block, attention_mask=mask, position_ids=positions)
        path, own = accepted_path(tree, draw(scored.logits[0], temperature, generator))
        target.keep(start, [0, *path])  # the root and the accepted nodes, behind the prefix
        draft_cache.crop(prefix)  # drop the tree's entries: the draft reads the accepted positions' true features
        emitted = [tree.tokens[i - 1] for i in path] + [own]
        before = len(tokens)
        tokens, done = stop_at(tokens + emitted, max_new_tokens, eos_id)
        rounds, round_tokens = rounds + 1, round_tokens + len(tokens) - before
        accepted_per_round.append(min(len(path), len(tokens) - before))  # (the limit may cut a round short)
        features = scored.features[:, [0, *path]]
        next_embeddings = target.embed(block.new_tensor([emitted]))
    return Decoded(tokens, rounds, round_tokens, accepted_per_round)


def grow(draft: EagleDraft, cache: KVCache, target: Target, root_feature: torch.Tensor, shape: TreeShape) -> DraftTree:
    """The round's draft tree (`grow_tree` with the target's head and embeddings)."""
    return grow_tree(draft, cache, target.head, target.embed, root_feature, shape)


def check_tree_attention(model: nn.Module, shape: TreeShape) -> None:
    implementation = getattr(model.config, "_attn_implementation", None)
    if shape.top_k > 1 and implementation not in (None, "sdpa", "eager"):
        raise DistillError(
            f"speculative.top_k > 1 verifies a tree with an attention mask, which {implementation} cannot take: "
            "load the target with attn_implementation sdpa or eager"
        )


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
    top_k: int = 1,
    total_tokens: int | None = None,
) -> SpeculativeReport:
    """Decode every prompt both ways (greedy), check the outputs are equal and time both (after one warm-up of
    each)."""
    was_training = draft.training
    draft.eval()
    tree = {"top_k": top_k, "total_tokens": total_tokens}
    greedy_decode(model, prompts[0], 2, eos_id)
    speculative_decode(model, draft, prompts[0], 2, depth, eos_id, **tree)
    greedy_time = speculative_time = 0.0
    same = rounds = round_tokens = tokens = 0
    for prompt in prompts:
        started = time.perf_counter()
        reference = greedy_decode(model, prompt, max_new_tokens, eos_id)
        greedy_time += time.perf_counter() - started
        started = time.perf_counter()
        decoded = speculative_decode(model, draft, prompt, max_new_tokens, depth, eos_id, **tree)
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
