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

from distill.analysis.memory import CHUNK, HIDDEN, METHODS, measure

SIZES = [(512, 32000), (1024, 32000), (2048, 32000), (4096, 32000)]
DIVERGENCES = ["forward_kl", "jsd"]
TARGET = 0.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the two smallest sizes")
    args = parser.parse_args()

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
