"""GLD (docs/methods.md, section 6) against Gromov-Wasserstein on small co-activation graphs, measured side by side.

    python benchmarks/gld_vs_gromov_wasserstein.py [--pairs 20] [--seed 0]

Needs POT (`pip install pot`), which the project itself does not depend on. CPU only, one thread, about a minute.

Graphs: for each n, random pairs of top-k co-activation graphs over a vocabulary of n channels, exactly as the loss
builds them: teacher logits (T = n positions, V = n, Gaussian, scale 3), student logits = teacher + sigma * noise
(noise of the same scale, sigma log-uniform in [0.01, 3]: from near-identical to unrelated), z-score, top-3,
`A = sum_t z~_t z~_t^T / T` (dense n x n, symmetric; entries may be negative).

Values and how they relate, for one pair with n nodes (padding to a common n is not needed: V is the same):
- GLD: the loss, `sum_i |sort(f_s)_i - sort(f_t)_i|` on the weighted degrees f = A 1.
- POT GW2: `ot.gromov.gromov_wasserstein2(A_s, A_t, p, q, "square_loss")` with uniform p = q = 1/n, i.e.
  `sum_{ijkl} (A_s[i,k] - A_t[j,l])^2 T_ij T_kl` at the coupling T its conditional-gradient solver returns (a local
  optimum: an upper bound on the true GW2 minimum). A permutation coupling has entries 1/n, so the objective is a mean
  over n^2 node pairs: the scale is GLD's (a sum over n nodes of sums over n neighbours) divided by n^2, squared.
  POT starts from the product coupling p q^T; "best" also runs it from the identity coupling (the channels of
  student and teacher correspond here) and keeps the smaller value, a tighter estimate of the true minimum.
- GW1@T: the L1-cost objective `sum_{ijkl} |A_s[i,k] - A_t[j,l]| T_ij T_kl` at POT's coupling.
- BF perm: brute-force Gromov-Wasserstein with L1 cost over permutation couplings, unnormalized,
  `min_pi sum_{ij} |A_s[i,j] - A_t[pi(i),pi(j)]|` (n <= 7 only).
Bounds (any coupling T with uniform marginals): `sum_{kl} |a_ik - b_jl| T_kl >= |f_s(i) - f_t(j)| / n`, and the best
coupling of two 1-D uniform measures is the sorted one, so `GLD / n^2 <= GW1(T) <= sqrt(GW2(T))` (Jensen); for
permutations `GLD <= BF perm`. The table counts the pairs where each chain holds at both POT couplings (up to
rounding), and gives the rank (Spearman) correlation of GLD with POT's GW2 and with the best GW2, and the linear
(Pearson) correlation of GLD with sqrt(best GW2), over the pairs of each n.

Timing: GLD is the whole loss from the (1, n, n) logits (transform, top-k, degrees, sort); POT is the GW2 solve only,
from the prebuilt dense graphs (numpy float64). Median of repeated calls, one thread each.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import numpy as np
import torch

from losses import GraphOnLogitsLoss
from losses.graph_on_logits import topk_transform

try:
    import ot
    from scipy.stats import pearsonr, spearmanr
except ImportError as exc:  # pragma: no cover - a message, not a traceback
    raise SystemExit(f"this benchmark needs POT and scipy ({exc}); install them with `pip install pot scipy`") from None

SIZES = [5, 6, 7, 10, 20, 30, 50]
TOP_K = 3
BRUTE_FORCE_MAX_N = 7


def dense_graph(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(T, V) logits -> the explicit (V, V) co-activation graph `sum_t z~_t z~_t^T / T` (z-score, top-k)."""
    values, index = topk_transform(logits, k, "zscore")  # (T, k)
    kept = torch.zeros_like(logits).scatter(-1, index, values)  # (T, V): z~_t
    return kept.T @ kept / logits.shape[0]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def brute_force_perm_gw1(graph_s: torch.Tensor, graph_t: torch.Tensor) -> float:
    """min over permutations pi of sum_ij |A_s[i, j] - A_t[pi(i), pi(j)]|."""
    perms = torch.tensor(list(itertools.permutations(range(graph_s.shape[0]))))  # (n!, n)
    permuted = graph_t[perms[:, :, None], perms[:, None, :]]  # (n!, n, n)
    return (graph_s[None] - permuted).abs().sum(dim=(1, 2)).min().item()


def gw1_at(coupling: torch.Tensor, graph_s: torch.Tensor, graph_t: torch.Tensor) -> float:
    """sum_{ijkl} |A_s[i, k] - A_t[j, l]| T_ij T_kl, with the (n, n, n, n) cost built explicitly (n <= 50)."""
    cost = (graph_s[:, None, :, None] - graph_t[None, :, None, :]).abs()  # (i, j, k, l)
    return torch.einsum("ijkl,ij,kl->", cost, coupling, coupling).item()


def solve_gw2(c_s: np.ndarray, c_t: np.ndarray, p: np.ndarray, init: np.ndarray | None = None) -> tuple[float, dict]:
    return ot.gromov.gromov_wasserstein2(c_s, c_t, p, p, loss_fun="square_loss", G0=init, log=True)


def run_size(n: int, pairs: int, generator: torch.Generator) -> dict:
    loss_fn = GraphOnLogitsLoss(top_k=TOP_K)
    p = np.full(n, 1.0 / n)
    rows = {key: [] for key in ("gld", "gw2", "gw2_best", "gw1", "bf", "t_gld", "t_gw")}
    holds_coupling = holds_bf = 0
    for _ in range(pairs):
        teacher = 3.0 * torch.randn(1, n, n, generator=generator, dtype=torch.float64)
        sigma = 10.0 ** (-2.0 + math.log10(300.0) * torch.rand((), generator=generator, dtype=torch.float64))
        student = teacher + sigma * 3.0 * torch.randn(1, n, n, generator=generator, dtype=torch.float64)
        graph_s, graph_t = dense_graph(student[0], TOP_K), dense_graph(teacher[0], TOP_K)
        c_s, c_t = graph_s.numpy(), graph_t.numpy()

        gld = loss_fn(student, teacher).item()
        gw2, log = solve_gw2(c_s, c_t, p)
        gw2_identity, log_identity = solve_gw2(c_s, c_t, p, np.eye(n) / n)
        tol = 1e-9 * max(1.0, gld)
        chain = True
        for value, found in ((gw2, log), (gw2_identity, log_identity)):
            gw1 = gw1_at(torch.as_tensor(np.asarray(found["T"]), dtype=torch.float64), graph_s, graph_t)
            chain &= gld / n**2 <= gw1 + tol / n**2 and gw1 <= math.sqrt(max(float(value), 0.0)) + 1e-12
            if found is log:
                rows["gw1"].append(gw1)
        holds_coupling += chain
        if n <= BRUTE_FORCE_MAX_N:
            bf = brute_force_perm_gw1(graph_s, graph_t)
            holds_bf += gld <= bf + tol
            rows["bf"].append(bf)

        repeats = 20 if n <= 20 else 5
        rows["t_gld"].append(median_seconds(lambda s=student, t=teacher: loss_fn(s, t), repeats))
        rows["t_gw"].append(
            median_seconds(lambda a=c_s, b=c_t: ot.gromov.gromov_wasserstein2(a, b, p, p, "square_loss"), repeats)
        )
        rows["gld"].append(gld)
        rows["gw2"].append(float(gw2))
        rows["gw2_best"].append(min(float(gw2), float(gw2_identity)))
    rows["holds_coupling"], rows["holds_bf"] = holds_coupling, holds_bf
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30, help="random graph pairs per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(args.seed)

    header = (
        f"{'n':>3} {'GLD ms':>7} {'POT ms':>7} {'POT/GLD':>7} {'GLD':>8} {'GLD/n^2':>8} {'GW1@T':>7} {'sqrtGW2':>7} "
        f"{'best':>7} {'BF perm':>8} {'chain':>6} {'<=BF':>6} {'rho POT':>7} {'rho best':>8} {'r best':>6}"
    )
    print(f"top-{TOP_K} z-score co-activation graphs, V = T = n, {args.pairs} pairs per n; values are means over pairs")
    print(header)
    print("-" * len(header))
    for n in SIZES:
        r = run_size(n, args.pairs, generator)
        t_gld, t_gw = statistics.mean(r["t_gld"]) * 1e3, statistics.mean(r["t_gw"]) * 1e3
        gld = statistics.mean(r["gld"])
        root, root_best = [math.sqrt(max(v, 0.0)) for v in r["gw2"]], [math.sqrt(max(v, 0.0)) for v in r["gw2_best"]]
        bf = f"{statistics.mean(r['bf']):8.3f}" if r["bf"] else f"{'-':>8}"
        holds_bf = f"{r['holds_bf']}/{args.pairs}" if r["bf"] else "-"
        print(
            f"{n:>3} {t_gld:7.3f} {t_gw:7.3f} {t_gw / t_gld:7.1f} {gld:8.3f} {gld / n**2:8.4f} "
            f"{statistics.mean(r['gw1']):7.4f} {statistics.mean(root):7.4f} {statistics.mean(root_best):7.4f} {bf} "
            f"{str(r['holds_coupling']) + '/' + str(args.pairs):>6} {holds_bf:>6} "
            f"{spearmanr(r['gld'], r['gw2']).statistic:7.3f} {spearmanr(r['gld'], r['gw2_best']).statistic:8.3f} "
            f"{pearsonr(r['gld'], root_best).statistic:6.3f}"
        )
    print(
        "\nGLD ms: the loss from (1, n, n) logits; POT ms: gromov_wasserstein2 from the prebuilt graphs (medians)."
        "\nGW1@T: L1-cost GW at POT's coupling; sqrtGW2 / best: sqrt of POT's GW2 from the product / best of two inits."
        "\nchain: pairs with GLD/n^2 <= GW1@T <= sqrt(GW2) at both POT couplings; <=BF: pairs with GLD <= BF perm."
        "\nrho POT / rho best: Spearman of GLD with GW2 / best GW2; r best: Pearson of GLD with sqrt(best GW2)."
    )


if __name__ == "__main__":
    main()
