"""Speculative decoding where a speedup can exist: a config-built Llama target of about 0.7B parameters trained on
the GPU, its EAGLE draft trained online, then the wall-clock speedup over greedy decoding and the accepted length of
chains and EAGLE-2 trees at several shapes.

At batch 1 a target this size does far less arithmetic per forward pass than the GPU can (each weight read for one
token, and in transformers' eager code the host's launches take longer still), so a pass over a tree of N tokens
costs about what one greedy step costs: every accepted draft token is a step saved, as long as the draft's levels
(one layer each) stay cheap beside the target's 24 layers. The tiny recipe's target (`specvlm_draft_tiny`: 4 layers
of width 128) has no such margin: a draft level costs a large share of its pass (0.87-1.06x measured on the H200).

What it runs, in order, each row printed the moment it is measured:
1. data: the tiny recipes' offline corpus (distill's `text` data, `source: python_stdlib`, `tokenizer: bytes`),
   packed into rows of `--seq-len` bytes, kept on the device; held-out prompts are the first `--prompt-tokens`
   bytes of validation rows (`prompts_from_rows`).
2. target: a `LlamaConfig` model (distill's `llama` builder, sdpa attention), fp32 master weights trained under bf16
   autocast with AdamW (betas 0.9/0.95, gradients clipped at 1, linear warm-up, then cosine to a tenth) for
   `--target-steps` or `--target-seconds`, whichever ends first (the schedule follows the nearer end); then its
   weights cast to bf16 (the rotary frequencies kept in fp32), frozen and in eval mode. A plain loop, not
   `distill fit`: this measures decoding, and random batches drawn from rows already on the GPU cost the loop
   nothing on the host.
3. draft: `EagleDraft.for_target(target)` trained online on the same rows with `task: draft_distill`'s step and
   objective (`DraftDistillLoss`: 0.1 soft CE + 1.0 SmoothL1 on the target's next hidden state; the frozen target run
   under no_grad each step) for `--draft-steps` or `--draft-seconds`; then cast to bf16.
4. decoding, shape by shape (`D`: a chain of D tokens; `DxKxN`: a tree of D levels, top-k K, its N best nodes
   verified), after one warm-up of each: every prompt greedily, then speculatively, alternately, the device
   synchronized around each timed decode. A row: accepted length (tokens per round), tokens/s of greedy and of
   speculative decoding, the speedup, the share of prompts whose output equals greedy's, and where a round's time
   goes: ms per round as measured, the medians of its two halves timed alone after the first prompt (the draft
   growing its tree; the target's pass over root and tree) and one greedy step.
A shape that would end after `--seconds` (counted from the end of the imports) is listed as skipped.

On the GPU (the defaults are sized for about 2.5 minutes on an H200; not yet run on a GPU; `bash
benchmarks/gpu_check.sh` runs it as its part gpu_spec, with the training times scaled to the time it is given):
    python benchmarks/gpu_speculative.py
Here, end to end on the CPU at tiny sizes (under a minute):
    python benchmarks/gpu_speculative.py --device cpu --hidden 64 --layers 2 --heads 4 --intermediate 176 \\
        --seq-len 64 --batch 8 --target-steps 60 --target-lr 3e-3 --draft-steps 60 --draft-lr 3e-3 --log-every 20 \\
        --max-documents 300 --prompts 2 --prompt-tokens 16 --new-tokens 24 --shapes 2 3x2x4 4x3x8 4
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.analysis.draft_run import parse_shape
from distill.data.corpus import PYTHON_STDLIB
from distill.data.text import CausalLMDataModule
from distill.generate.draft_tree import TreeShape, grow_tree, verification_inputs
from distill.generate.speculative import Target, greedy_decode, prompts_from_rows, speculative_decode
from distill.models import create_model
from distill.models.draft import EagleDraft, KVCache
from losses import DraftDistillLoss

STARTED = time.perf_counter()  # after the imports: `--seconds` and the times printed count from here
Prompt = dict[str, torch.Tensor]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (the tiny dry run)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="training autocast and decoding")
    parser.add_argument("--seconds", type=float, default=130.0, help="skip the shapes that would end after this")
    parser.add_argument("--seed", type=int, default=0)
    size = parser.add_argument_group("target (LlamaConfig)")
    size.add_argument("--hidden", type=int, default=1536)
    size.add_argument("--layers", type=int, default=24)
    size.add_argument("--heads", type=int, default=12)
    size.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no grouped-query attention)")
    size.add_argument("--intermediate", type=int, default=4096)
    train = parser.add_argument_group("training (target, then draft)")
    train.add_argument("--seq-len", type=int, default=512)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--max-documents", type=int, default=None, help="the corpus's first N docstrings (None: all)")
    train.add_argument("--target-steps", type=int, default=400)
    train.add_argument("--target-seconds", type=float, default=40.0)
    train.add_argument("--target-lr", type=float, default=3e-4)
    train.add_argument("--draft-steps", type=int, default=400)
    train.add_argument("--draft-seconds", type=float, default=15.0)
    train.add_argument("--draft-lr", type=float, default=5e-4)
    train.add_argument("--warmup", type=int, default=30, help="warm-up steps of both schedules")
    train.add_argument("--log-every", type=int, default=50)
    decode = parser.add_argument_group("decoding")
    decode.add_argument("--prompts", type=int, default=4)
    decode.add_argument("--prompt-tokens", type=int, default=64)
    decode.add_argument("--new-tokens", type=int, default=128)
    decode.add_argument(
        "--shapes",
        nargs="+",
        default=["3", "5x8x32", "6x10x60", "5", "4x4x16", "6x8x48"],  # most telling first: `--seconds` may cut the last
        help="D: a chain of D tokens; DxK: a tree of D levels, top-k K; DxKxN: keeping its N best nodes",
    )
    decode.add_argument("--repeats", type=int, default=5, help="timings of each round half (their median)")
    return parser.parse_args()


def say(text: str) -> None:
    print(text, flush=True)


def since_start() -> float:
    return time.perf_counter() - STARTED


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """`fn(*args, **kwargs)` and its wall-clock seconds, the device synchronized before and after (its queued work
    is neither counted in nor left out)."""
    sync(device)
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    sync(device)
    return result, time.perf_counter() - started


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# -- data ------------------------------------------------------------------------------------------------------------


def corpus(args: argparse.Namespace) -> tuple[torch.Tensor, list[Prompt], int]:
    """Full training rows `[N, seq_len]` (distill's `text` data: the stdlib's docstrings, bytes, packed), the held-out
    prompts (validation rows) and the vocabulary size."""
    data = CausalLMDataModule(
        source=PYTHON_STDLIB, tokenizer="bytes", seq_len=args.seq_len, packing=True, max_documents=args.max_documents
    )
    data.setup()
    train = data.train_set.tensors
    full = train["attention_mask"].bool().all(-1)  # packing fills every row but the last: no padding to mask
    prompts = prompts_from_rows(data.val_set, args.prompts, args.prompt_tokens)
    if len(prompts) < args.prompts:
        raise SystemExit(f"only {len(prompts)} validation rows hold {args.prompt_tokens} tokens; need {args.prompts}")
    return train["input_ids"][full].long(), prompts, data.vocab_size


def sample(rows: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` random rows (drawn on the host, gathered where the rows are)."""
    index = torch.randint(len(rows), (batch,), generator=generator)
    return rows[index.to(rows.device)]


# -- training --------------------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """A training loop's end: `steps` steps or `seconds` of wall clock, whichever comes first."""

    steps: int
    seconds: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self, step: int) -> bool:
        return step >= self.steps or self.elapsed() >= self.seconds

    def progress(self, step: int) -> float:
        """How far the loop is towards its nearer end, in [0, 1]: the schedule decays whichever ends it."""
        return min(1.0, max(step / self.steps, self.elapsed() / self.seconds))


def set_learning_rate(optimizer: torch.optim.Optimizer, peak: float, step: int, warmup: int, progress: float) -> None:
    """Linear warm-up over `warmup` steps, then cosine from `peak` to a tenth of it."""
    rate = peak * (step + 1) / warmup if step < warmup else peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
    for group in optimizer.param_groups:
        group["lr"] = rate


def adamw(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, betas=(0.9, 0.95), weight_decay=0.0, fused=device.type == "cuda")


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_target(model: nn.Module, rows: torch.Tensor, args: argparse.Namespace, device: torch.device) -> None:
    """Next-token cross-entropy on random full rows (transformers shifts the labels), bf16 autocast over fp32
    weights."""
    model.train()
    optimizer, budget = adamw(model, device), Budget(args.target_steps, args.target_seconds)
    generator, dtype, step = torch.Generator().manual_seed(args.seed), DTYPES[args.dtype], 0
    while not budget.done(step):
        set_learning_rate(optimizer, args.target_lr, step, args.warmup, budget.progress(step))
        ids = sample(rows, args.batch, generator)  # (B, T)
        with autocast(device, dtype):
            loss = model(input_ids=ids, labels=ids).loss
        optimizer_step(model, optimizer, loss)
        step += 1
        if step % args.log_every == 0 or budget.done(step):
            say(f"target step {step:>4}  loss {loss.item():.3f}  {budget.elapsed():6.1f} s")
    sync(device)
    tokens = step * args.batch * args.seq_len
    say(f"target trained: {step} steps in {budget.elapsed():.1f} s ({tokens / budget.elapsed():,.0f} tokens/s)")


def draft_step(
    target: nn.Module, draft: EagleDraft, objective: DraftDistillLoss, ids: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`task: draft_distill`'s step on plain rows: draft position t reads the target's f_t and the embedding of
    x_{t+1}, and is aligned with the target's f_{t+1} and its logits there."""
    with torch.no_grad():
        out = target(input_ids=ids, output_hidden_states=True)
    features, embeddings = out.hidden_states[-1], out.hidden_states[0]  # (B, T, H): the head's input, the embeddings
    with autocast(ids.device, dtype):
        predicted = draft(features[:, :-1], embeddings[:, 1:])  # (B, T - 1, H): f^_{t+1}
        draft_logits = target.get_output_embeddings()(predicted)  # the target's frozen head, shared
    target_logits = out.logits[:, 1:]
    mask = torch.ones(predicted.shape[:2], dtype=torch.bool, device=ids.device)  # packed text: every token labelled
    ce, feature = objective.parts(draft_logits, target_logits, predicted, features[:, 1:], mask)
    agreement = (draft_logits.argmax(-1) == target_logits.argmax(-1)).float().mean()
    return {"loss": objective.combine(ce, feature), "ce": ce, "feature": feature, "agreement": agreement}


def train_draft(
    target: nn.Module, draft: EagleDraft, rows: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> None:
    objective = DraftDistillLoss(ce_weight=0.1, feature_weight=1.0)  # SpecVLM's weights, as the tiny recipe's
    draft.train()
    optimizer, budget = adamw(draft, device), Budget(args.draft_steps, args.draft_seconds)
    generator, dtype, step = torch.Generator().manual_seed(args.seed + 1), DTYPES[args.dtype], 0
    while not budget.done(step):
        set_learning_rate(optimizer, args.draft_lr, step, args.warmup, budget.progress(step))
        values = draft_step(target, draft, objective, sample(rows, args.batch, generator), dtype)
        optimizer_step(draft, optimizer, values["loss"])
        step += 1
        if step % args.log_every == 0 or budget.done(step):
            parts = "  ".join(f"{name} {value.item():.3f}" for name, value in values.items())
            say(f"draft step {step:>4}  {parts}  {budget.elapsed():6.1f} s")
    sync(device)
    say(f"draft trained: {step} steps in {budget.elapsed():.1f} s")


# -- decoding --------------------------------------------------------------------------------------------------------


@dataclass
class ShapeRow:
    kind: str
    shape: str
    accepted: float  # tokens per verification round (accepted drafts + 1)
    greedy_rate: float  # tokens/s
    speculative_rate: float
    lossless: float
    round_ms: float  # measured: speculative seconds / rounds
    draft_ms: float  # growing the draft tree, timed alone (median)
    verify_ms: float  # the target's pass over root + tree, its inputs built, timed alone (median)
    greedy_step_ms: float

    HEADER = (
        f"{'kind':<5} {'shape':>8} {'accepted':>8} {'greedy tok/s':>12} {'spec tok/s':>10} {'speedup':>7} "
        f"{'lossless':>8} {'round ms':>8} {'draft ms':>8} {'verify ms':>9} {'greedy step ms':>14}"
    )

    def line(self) -> str:
        speedup = self.speculative_rate / self.greedy_rate
        return (
            f"{self.kind:<5} {self.shape:>8} {self.accepted:>8.3f} {self.greedy_rate:>12.1f} "
            f"{self.speculative_rate:>10.1f} {speedup:>6.2f}x {100 * self.lossless:>7.1f}% {self.round_ms:>8.2f} "
            f"{self.draft_ms:>8.2f} {self.verify_ms:>9.2f} {self.greedy_step_ms:>14.2f}"
        )


@torch.inference_mode()
def round_halves(
    model: nn.Module, draft: EagleDraft, prompt: Prompt, shape: TreeShape, device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median ms of a round's two halves after `prompt`, each timed alone: the draft growing its tree from the root,
    and the target verifying root + tree in one pass (caches cut back after each)."""
    target, cache = Target(model), KVCache()
    scored = target.forward(prompt["input_ids"])
    first = scored.logits[:, -1:].argmax(-1)  # (1, 1): the root, the target's own first token
    next_embeddings = torch.cat([scored.embeddings[:, 1:], target.embed(first)], dim=1)
    root_feature = draft(scored.features, next_embeddings, cache)[:, -1:]  # (1, 1, H)
    prefix, start, root = len(cache), len(target), int(first)

    def verify(tree: Any) -> None:
        block, positions, mask = verification_inputs(tree, root, start, scored.logits.dtype, device)
        target.forward(block, attention_mask=mask, position_ids=positions)

    grow_times, verify_times = [], []
    for _ in range(repeats):
        tree, seconds = timed(device, grow_tree, draft, cache, target.head, target.embed, root_feature, shape)
        grow_times.append(seconds)
        cache.crop(prefix)
        verify_times.append(timed(device, verify, tree)[1])
        target.crop(start)
    return 1e3 * statistics.median(grow_times), 1e3 * statistics.median(verify_times)


def measure_shape(
    target: nn.Module, draft: EagleDraft, prompts: list[Prompt], name: str, args: argparse.Namespace
) -> ShapeRow:
    device, tree = prompts[0]["input_ids"].device, parse_shape(name)
    shape = TreeShape(**tree)
    greedy_decode(target, prompts[0], 4)  # warm-ups: this shape's kernels, masks and cache sizes
    speculative_decode(target, draft, prompts[0], 2 * shape.depth + 2, **tree)
    greedy_seconds = speculative_seconds = 0.0
    greedy_tokens = speculative_tokens = rounds = round_tokens = same = 0
    for prompt in prompts:  # alternately, so that a change of load on the machine affects both
        reference, seconds = timed(device, greedy_decode, target, prompt, args.new_tokens)
        greedy_seconds, greedy_tokens = greedy_seconds + seconds, greedy_tokens + len(reference)
        decoded, seconds = timed(device, speculative_decode, target, draft, prompt, args.new_tokens, **tree)
        speculative_seconds, speculative_tokens = (
            speculative_seconds + seconds,
            speculative_tokens + len(decoded.tokens),
        )
        rounds, round_tokens = rounds + decoded.rounds, round_tokens + decoded.round_tokens
        same += decoded.tokens == reference
    draft_ms, verify_ms = round_halves(target, draft, prompts[0], shape, device, args.repeats)
    return ShapeRow(
        kind="chain" if shape.top_k == 1 else "tree",
        shape=name,
        accepted=round_tokens / max(rounds, 1),
        greedy_rate=greedy_tokens / greedy_seconds,
        speculative_rate=speculative_tokens / speculative_seconds,
        lossless=same / len(prompts),
        round_ms=1e3 * speculative_seconds / max(rounds, 1),
        draft_ms=draft_ms,
        verify_ms=verify_ms,
        greedy_step_ms=1e3 * greedy_seconds / greedy_tokens,
    )


def decode_shapes(target: nn.Module, draft: EagleDraft, prompts: list[Prompt], args: argparse.Namespace) -> None:
    say(
        f"decoding {len(prompts)} held-out prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens each, "
        f"{args.dtype}; draft ms / verify ms: a round's halves timed alone"
    )
    say(ShapeRow.HEADER)
    last = 0.0
    for name in args.shapes:
        if since_start() + last > args.seconds:
            say(f"skipped  {name:>8}  (it would end after --seconds {args.seconds:.0f}; {since_start():.0f} s so far)")
            continue
        row, last = timed(prompts[0]["input_ids"].device, measure_shape, target, draft, prompts, name, args)
        say(row.line())


# -- the run -------------------------------------------------------------------------------------------------------


def build_target(args: argparse.Namespace, vocab: int, device: torch.device) -> nn.Module:
    with device:  # parameters made and initialized on the device: no 0.7B built on the host, then copied
        return create_model(
            "llama",
            vocab_size=vocab,
            hidden_size=args.hidden,
            intermediate_size=args.intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads or args.heads,
            max_position_embeddings=max(args.seq_len, args.prompt_tokens + args.new_tokens + 64),
            attn_implementation="sdpa",
        )


def cast_weights(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The parameters in `dtype`, the buffers as they are: `Module.to` would round the rotary frequencies
    (`inv_freq`) to bf16 too, and shift every position's angles away from those the target was trained with."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)
    return model


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return f"{device}, {torch.get_num_threads()} threads"
    props = torch.cuda.get_device_properties(device)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"


def main() -> None:
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # every row the moment it is measured, into a file too
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    say(f"torch {torch.__version__}, {describe(device)}")
    rows, prompts, vocab = corpus(args)
    rows, prompts = rows.to(device), [{k: v.to(device) for k, v in p.items()} for p in prompts]
    say(f"data: {len(rows)} training rows of {args.seq_len} bytes, vocabulary {vocab} ({since_start():.1f} s)")
    target = build_target(args, vocab, device)
    count = sum(p.numel() for p in target.parameters())
    say(
        f"target: Llama {args.layers} layers x {args.hidden} (MLP {args.intermediate}, {args.heads} heads), "
        f"{count / 1e6:,.1f}M parameters ({since_start():.1f} s)"
    )
    train_target(target, rows, args, device)
    cast_weights(target, dtype).eval().requires_grad_(False)  # frozen from here on: the draft's teacher, the decoder
    draft = EagleDraft.for_target(target).to(device)
    say(f"draft: {sum(p.numel() for p in draft.parameters()) / 1e6:,.1f}M parameters ({since_start():.1f} s)")
    train_draft(target, draft, rows, args, device)
    draft.to(dtype).eval()
    if device.type == "cuda":
        say(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    decode_shapes(target, draft, prompts, args)
    say(f"done in {since_start():.1f} s")


if __name__ == "__main__":
    main()
