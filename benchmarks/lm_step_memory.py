"""Peak memory of one causal-LM distillation training step (`task: causal_lm`, CE 0.5 + token forward KL 0.5):
full logits against the chunked LM head (`causal_lm.logits: full | chunked`), at realistic vocabularies.

Each (vocabulary, mode) runs in a FRESH subprocess: a student (2 layers, width 256) and a teacher (4 layers,
width 512) Llama with the vocabulary padded to V rows, a batch of B x T tokens; after building the models, the batch
and one warm-up step at a tiny length, the baseline is read, then one training step with backward runs, and the
peak above the baseline is reported. On CUDA the peak is `torch.cuda.max_memory_allocated` (exact); on CPU the
peak resident set size (VmHWM, reset after the warm-up through /proc/self/clear_refs), with glibc's mmap threshold
fixed so freed blocks leave at once.

The full path holds the student's and the teacher's `[B, T, V]` logits (fp32: 4 bytes x B x T x V each), their
softmaxes and the logits' gradient; the chunked path holds the hidden states and one chunk's rows. The loss column
shows both paths compute the same step.

    python benchmarks/lm_step_memory.py                                  # CPU: V = 32,000 and 128,256, 2 x 1024 tokens
    python benchmarks/lm_step_memory.py --device cuda --tokens 4x2048 --vocab 128256 151936
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

FULL_PATH_CHUNK = 1024  # the token KL's own chunks on the full path (as the bundled recipes set it)


def one(vocab: int, mode: str, batch: int, length: int, device: str, bf16: bool) -> dict:
    """Runs in the subprocess: the measurement of one configuration."""
    import torch

    from distill.models import create_model
    from distill.tasks.causal_lm import CausalLMTask
    from losses import TokenDivergenceLoss

    def llama(seed: int, width: int, layers: int):
        torch.manual_seed(seed)
        model = create_model(
            "llama",
            vocab_size=259,
            padded_vocab_size=vocab,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=max(length, 64),
        )
        return model.to(device, torch.bfloat16 if bf16 else torch.float32)

    student, teacher = llama(0, 256, 2), llama(1, 512, 4)
    terms = {"token_kl": (0.5, TokenDivergenceLoss("forward_kl", chunk_size=FULL_PATH_CHUNK))}
    task = CausalLMTask(student, teacher, terms=terms, ce_weight=0.5, logits=mode)  # chunked: 2^23 / V tokens
    task.log = lambda *a, **k: None  # no trainer here

    def inputs(t: int) -> dict:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 259, (batch, t), generator=g)
        labels = ids.clone()
        labels[:, : t // 8] = -100  # a prompt
        return {
            "input_ids": ids.to(device),
            "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device),
        }

    task.training_step(inputs(16), 0).backward()  # warm-up: lazy initialization is not counted
    student.zero_grad(set_to_none=True)
    data = inputs(length)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_kib() * 1024
    start = time.perf_counter()
    loss = task.training_step(data, 0)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_rss_kib() * 1024
    seconds = time.perf_counter() - start
    return {"extra_mib": (peak - base) / 2**20, "seconds": seconds, "loss": float(loss.detach())}


def reset_peak_rss() -> None:
    """Start the peak resident set size (VmHWM) afresh, so building the models does not count (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def measure(vocab: int, mode: str, batch: int, length: int, device: str, bf16: bool) -> dict:
    args = json.dumps([vocab, mode, batch, length, device, bf16])
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import lm_step_memory as m; "
        f"print(json.dumps(m.one(*json.loads({args!r}))))"
    )
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured(vocab: int, mode: str, batch: int, length: int, args: argparse.Namespace) -> dict:
    """`measure`, with its own line printed at once (the table row waits for both modes)."""
    result = measure(vocab, mode, batch, length, args.device, args.bf16)
    if "error" in result:
        print(f"V {vocab:,} {mode}: {result['error']}")
    else:
        print(f"V {vocab:,} {mode}: peak {result['extra_mib']:,.0f} MiB, {result['seconds']:.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--tokens", default="2x1024", help="batch x length, e.g. 4x2048")
    parser.add_argument("--bf16", action="store_true", help="models in bf16 (the losses still compute in fp32)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # every row the moment it is measured, into a file too
    batch, length = (int(x) for x in args.tokens.split("x"))
    where = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS"
    print(
        f"causal_lm training step, {batch} x {length} tokens, {args.device}, {'bf16' if args.bf16 else 'fp32'} models; "
        f"peak extra memory = {where} above the models and the batch"
    )
    rows = []
    for vocab in args.vocab:
        full, chunked = (measured(vocab, mode, batch, length, args) for mode in ("full", "chunked"))
        if "error" in full or "error" in chunked:
            rows.append(f"| {vocab:,} | {full.get('error', '')} | {chunked.get('error', '')} | | | | | |")
            continue
        ratio = chunked["extra_mib"] / full["extra_mib"]
        print(f"V {vocab:,}: chunked / full peak {ratio:.3f}, losses {full['loss']:.5f} / {chunked['loss']:.5f}")
        rows.append(
            f"| {vocab:,} | {full['extra_mib']:,.0f} | {chunked['extra_mib']:,.0f} | {ratio:.3f} "
            f"| {full['seconds']:.2f} | {chunked['seconds']:.2f} | {full['loss']:.5f} | {chunked['loss']:.5f} |"
        )
    columns = ["vocabulary", "full logits: peak MiB", "chunked: peak MiB", "chunked / full", "full s", "chunked s"]
    print("\n| " + " | ".join([*columns, "loss full", "loss chunked"]) + " |")
    print("|---" * (len(columns) + 2) + "|")
    print("\n".join(rows))
    one_tensor = 4 * batch * length * max(args.vocab) / 2**20
    print(f"\n(one fp32 [B, T, V] tensor at the largest vocabulary: {one_tensor:,.0f} MiB)")


if __name__ == "__main__":
    main()
