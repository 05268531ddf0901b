"""Peak memory and time of one forward + backward of a token-level divergence: plain autograd vs chunked vs fused.

Run: `python benchmarks/token_divergence_memory.py` (about 3 minutes on 2 CPU cores; `--quick` for the two smallest
sizes). Prints one table, every number measured in this run, side by side.

Methods, for N tokens x V vocabulary (shaped (4, N / 4, V), labels with ~10% of the positions at -100):

- `naive`: plain autograd over the full fp32 logits, the way most KD code writes it: `log_softmax` of both sides,
  the divergence per token, masked, summed and divided by the number of valid tokens.
- `chunked`: `TokenDivergenceLoss(divergence, chunk_size=CHUNK)`; the gradient w.r.t. the student logits is
  computed chunk by chunk in the forward pass.
- `fused`: `TokenDivergenceLoss(...).fused(hidden, lm_head_weight, ...)` with hidden size H: the student logits are
  computed chunk by chunk from (4, N / 4, H) hidden states and a (V, H) head and never exist in full.

What "peak extra" means: each configuration runs in a FRESH subprocess. After a tiny warm-up (so lazy
initialization is not counted) the inputs are allocated and touched, the resident set size is read (the baseline),
one forward + backward runs, and the peak RSS (`resource.getrusage(...).ru_maxrss`) minus that baseline is reported.
So the inputs themselves are NOT counted (for naive/chunked: the fp32 student logits, N * V * 4 bytes, and the fp32
teacher logits; for fused: the hidden states, the head weight and the teacher logits), while everything the method
allocates IS counted: its intermediates and the gradients it leaves in `.grad` — the student-logit gradient
(N * V * 4 bytes) for both naive and chunked, the hidden-state and weight gradients for fused. The subprocesses run
with `MALLOC_MMAP_THRESHOLD_` fixed at 128 KiB so that glibc returns freed large blocks to the OS at once (otherwise
its adaptive threshold keeps freed chunk buffers resident and RSS overstates the live memory). The time is one
forward + backward (wall clock, after the warm-up), on whatever threads torch uses by default; the fused time
includes the LM-head matmuls (the logits and the hidden-state and weight gradients), which the other two do not do.

The loss column checks that naive and chunked agree; fused starts from its own random hidden states and head, so
its student logits (and loss) differ.

Target: at 4096 x 32000, chunked peak extra <= 0.3 x naive; the printout says whether it is met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(512, 32000), (1024, 32000), (2048, 32000), (4096, 32000)]
DIVERGENCES = ["forward_kl", "jsd"]
METHODS = ["naive", "chunked", "fused"]
CHUNK = 512  # tokens per chunk for chunked and fused
HIDDEN = 512  # H for the fused LM head
BATCH = 4
TARGET = 0.3


def naive_loss(student, teacher, labels, divergence: str, beta: float = 0.5):
    """Plain autograd over the full (B, T, V) fp32 logits: per-token divergence, masked, / number of valid tokens."""
    import math

    import torch
    import torch.nn.functional as F

    log_s, log_t = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    if divergence == "forward_kl":
        per_token = (log_t.exp() * (log_t - log_s)).sum(-1)
    else:  # generalized JSD(beta)
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1 - beta))
        per_token = beta * (log_t.exp() * (log_t - log_m)).sum(-1) + (1 - beta) * (log_s.exp() * (log_s - log_m)).sum(
            -1
        )
    valid = labels != -100
    return torch.where(valid, per_token, 0.0).sum() / valid.sum().clamp(min=1)


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _inputs(tokens: int, vocab: int, method: str, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    steps = tokens // BATCH
    labels = torch.randint(0, vocab, (BATCH, steps), generator=generator)
    labels[torch.rand(BATCH, steps, generator=generator) < 0.1] = -100
    teacher = 3.0 * torch.randn(BATCH, steps, vocab, generator=generator)
    if method == "fused":
        hidden = torch.randn(BATCH, steps, HIDDEN, generator=generator).requires_grad_()
        weight = (torch.randn(vocab, HIDDEN, generator=generator) / HIDDEN**0.5).requires_grad_()
        return (hidden, weight), teacher, labels
    student = (3.0 * torch.randn(BATCH, steps, vocab, generator=generator)).requires_grad_()
    return (student,), teacher, labels


def _step(method: str, divergence: str, student_side, teacher, labels):
    from losses import TokenDivergenceLoss

    if method == "naive":
        loss = naive_loss(*student_side, teacher, labels, divergence)
    elif method == "chunked":
        loss = TokenDivergenceLoss(divergence, chunk_size=CHUNK)(*student_side, teacher, labels)
    else:
        hidden, weight = student_side
        loss = TokenDivergenceLoss(divergence, chunk_size=CHUNK).fused(hidden, weight, teacher, labels)
    loss.backward()
    return loss


def worker(tokens: int, vocab: int, method: str, divergence: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    _step(method, divergence, *_inputs(64, 128, method, seed=1))  # warm-up: lazy init, kernels, imports
    student_side, teacher, labels = _inputs(tokens, vocab, method)
    baseline = _rss_kib()
    start = time.perf_counter()
    loss = _step(method, divergence, student_side, teacher, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"extra_mib": (peak - baseline) / 1024, "seconds": seconds, "loss": loss.item()}))


def measure(tokens: int, vocab: int, method: str, divergence: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "PYTHONPATH": str(ROOT)}
    args = [sys.executable, __file__, "--worker", str(tokens), str(vocab), method, divergence]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two smallest sizes")
    parser.add_argument("--worker", nargs=4, metavar=("N", "V", "METHOD", "DIVERGENCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tokens, vocab, method, divergence = args.worker
        worker(int(tokens), int(vocab), method, divergence)
        return

    sizes = SIZES[:2] if args.quick else SIZES
    print(f"chunk_size={CHUNK}, fused H={HIDDEN}, fp32, ~10% of tokens masked; one forward+backward per fresh process")
    header = f"{'size (N x V)':>14} {'divergence':>10} {'method':>8} {'peak extra MiB':>15} {'time s':>8}"
    header += f" {'mem / naive':>12} {'time / naive':>13} {'loss':>10}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for tokens, vocab in sizes:
        for divergence in DIVERGENCES:
            results = {method: measure(tokens, vocab, method, divergence) for method in METHODS}
            naive = results["naive"]
            for method, r in results.items():
                mem_ratio = r["extra_mib"] / naive["extra_mib"]
                time_ratio = r["seconds"] / naive["seconds"]
                print(
                    f"{f'{tokens} x {vocab}':>14} {divergence:>10} {method:>8} {r['extra_mib']:>15.0f} "
                    f"{r['seconds']:>8.2f} {mem_ratio:>12.2f} {time_ratio:>13.2f} {r['loss']:>10.5f}"
                )
            if (tokens, vocab) == SIZES[-1]:
                ratio = results["chunked"]["extra_mib"] / naive["extra_mib"]
                verdicts.append(
                    f"{divergence}: chunked/naive memory {ratio:.2f} -> {'MET' if ratio <= TARGET else 'NOT met'}"
                )
    if verdicts:
        print(f"target at {SIZES[-1][0]} x {SIZES[-1][1]}: chunked peak extra <= {TARGET} x naive")
        for verdict in verdicts:
            print("  " + verdict)


if __name__ == "__main__":
    main()
