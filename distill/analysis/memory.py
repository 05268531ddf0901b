"""Peak memory and time of one forward + backward of a token-level divergence, each in a fresh process: plain
autograd over full logits (`naive`), `TokenDivergenceLoss` in chunks (`chunked`), and the fused LM-head path
(`fused`). Used by benchmarks/token_divergence_memory.py (which explains the method) and the notebooks.

`measure(tokens, vocab, method, divergence)` returns {"extra_mib", "seconds", "loss"}: the peak resident memory
above the inputs (the inputs themselves are not counted; everything the method allocates, gradients included, is).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

METHODS = ("naive", "chunked", "fused")
CHUNK = 512  # tokens per chunk for chunked and fused
HIDDEN = 512  # H for the fused LM head
BATCH = 4


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
    _step(method, divergence, *_inputs(64, 128, method, seed=1))  # warm-up: lazy init, kernels, imports
    student_side, teacher, labels = _inputs(tokens, vocab, method)
    baseline = _rss_kib()
    start = time.perf_counter()
    loss = _step(method, divergence, student_side, teacher, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"extra_mib": (peak - baseline) / 1024, "seconds": seconds, "loss": loss.item()}))


def measure(tokens: int, vocab: int, method: str, divergence: str) -> dict:
    """Peak extra memory (MiB), time (s) and loss of one forward + backward, measured in a fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    args = [sys.executable, "-m", "distill.analysis.memory", str(tokens), str(vocab), method, divergence]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # a worker: python -m distill.analysis.memory N V METHOD DIVERGENCE
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
