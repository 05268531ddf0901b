"""GraphOnLogitsLoss (docs/methods.md, section 6) through the loss contract (tests/losses/contract.py), plus the
consequences section 6 lists: zero for equal graphs, invariance to relabelling channels, different vocabularies and
lengths, equality with the explicit dense graph, and the Gromov-Wasserstein lower bound (brute force over
permutations)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from distill.tasks.loss_terms import LOSSES
from losses import GraphOnLogitsLoss, zscore
from losses.graph_on_logits import sorted_l1, topk_transform, weighted_degrees
from tests.losses.contract import (
    assert_constructor_annotated_and_documented,
    assert_no_gradient_reaches_the_teacher,
    assert_zero_with_finite_gradients,
    logits,
)

TRANSFORMS = ["zscore", "softmax", "none"]


# ---------------------------------------------------------------- the naive float64 reference, from the formula


def reference_transform(row: torch.Tensor, transform: str) -> torch.Tensor:
    """One position's transformed logits over the vocabulary, written out."""
    if transform == "zscore":
        centred = row - row.sum() / len(row)
        std = torch.sqrt((centred**2).sum() / (len(row) - 1))  # unbiased
        return centred / (std + 1e-7)
    if transform == "softmax":
        e = torch.exp(row - row.max())
        return e / e.sum()
    return row


def dense_graph(
    rows: torch.Tensor, mask: torch.Tensor | None, k: int, transform: str, normalize: bool = True
) -> torch.Tensor:
    """The explicit co-activation graph `A = sum_t m_t z~_t z~_t^T / n` (V x V) of one sample's (T, V) logits."""
    length, vocab = rows.shape
    m = torch.ones(length, dtype=torch.float64) if mask is None else mask.to(torch.float64)
    graph = torch.zeros(vocab, vocab, dtype=torch.float64)
    for t in range(length):
        z = reference_transform(rows[t].double(), transform)
        keep = torch.zeros(vocab, dtype=torch.bool)
        keep[torch.argsort(z.detach(), descending=True)[:k]] = True  # top-k by sorting (inputs have no ties)
        z_kept = torch.where(keep, z, 0.0)
        graph = graph + m[t] * torch.outer(z_kept, z_kept)
    return graph / max(m.sum().item(), 1.0) if normalize else graph


def reference_gld(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_mask: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    k: int = 10,
    transform: str = "zscore",
    normalize: bool = True,
) -> torch.Tensor:
    """Per sample: dense graphs, row sums, zero-pad to max(Vs, Vt), sort descending, L1; mean over the samples with a
    valid position on either side."""
    total, kept = torch.zeros((), dtype=torch.float64), 0
    width = max(student.shape[-1], teacher.shape[-1])
    for b in range(student.shape[0]):
        s_mask = None if student_mask is None else student_mask[b]
        t_mask = None if teacher_mask is None else teacher_mask[b]
        s_valid = student.shape[1] > 0 if s_mask is None else bool(s_mask.any())
        t_valid = teacher.shape[1] > 0 if t_mask is None else bool(t_mask.any())
        if not (s_valid or t_valid):
            continue
        kept += 1
        f_s = dense_graph(student[b], s_mask, k, transform, normalize).sum(dim=1)
        f_t = dense_graph(teacher[b].detach(), t_mask, k, transform, normalize).sum(dim=1)
        f_s = torch.cat([f_s, f_s.new_zeros(width - len(f_s))]).sort(descending=True).values
        f_t = torch.cat([f_t, f_t.new_zeros(width - len(f_t))]).sort(descending=True).values
        total = total + (f_s - f_t).abs().sum()
    return total / max(kept, 1)


def assert_value_and_gradient_match(loss_fn, reference_fn, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Equal values (float64) and equal student gradients of `0.37 * value` (a non-unit upstream gradient)."""
    ref_student = student.detach().clone().requires_grad_()
    value, expected = loss_fn(student, teacher), reference_fn(ref_student, teacher)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    (0.37 * value).backward()
    (0.37 * expected).backward()
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-9, atol=1e-12)


def masks(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) boolean masks with the first `lengths[b]` positions valid."""
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


# ------------------------------------------------------------------ the loss contract


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_matches_float64_reference_in_value_and_gradient(transform: str, normalize: bool) -> None:
    # B = 4 with different valid lengths (one sample all masked on both sides), Vs != Vt and Ts != Tt
    student = logits(4, 5, 9, seed=0, dtype=torch.float64).requires_grad_()
    teacher = logits(4, 4, 7, seed=1, dtype=torch.float64)
    s_mask, t_mask = masks([5, 2, 0, 3], 5), masks([4, 1, 0, 4], 4)
    loss_fn = GraphOnLogitsLoss(top_k=3, transform=transform, normalize=normalize)
    assert_value_and_gradient_match(
        lambda s, t: loss_fn(s, t, s_mask, t_mask),
        lambda s, t: reference_gld(s, t, s_mask, t_mask, 3, transform, normalize),
        student,
        teacher,
    )
    assert torch.equal(student.grad[2], torch.zeros_like(student.grad[2]))  # the all-masked sample
    assert torch.equal(student.grad[1, 2:], torch.zeros_like(student.grad[1, 2:]))  # masked positions
    assert student.grad[0].abs().sum() > 0


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_gradcheck_float64_wrt_student(transform: str) -> None:
    # random Gaussian inputs: no ties in the top-k or in the sorted degrees, no degree at exactly 0
    student = logits(2, 3, 6, seed=2, dtype=torch.float64).requires_grad_()
    teacher = logits(2, 2, 5, seed=3, dtype=torch.float64)
    s_mask, t_mask = masks([3, 2], 3), masks([2, 1], 2)
    loss_fn = GraphOnLogitsLoss(top_k=2, transform=transform)
    assert torch.autograd.gradcheck(lambda s: loss_fn(s, teacher, s_mask, t_mask), (student,))


def test_pinned_golden_value_raw_logits() -> None:
    # transform "none", k = 2.
    # Sample 1, student (Ts = 2, Vs = 3): [3, -1, 2] keeps ch0 = 3, ch2 = 2, sum 5 -> ch0 += 15, ch2 += 10;
    #   [1, -3, -5] keeps ch0 = 1, ch1 = -3, sum -2 -> ch0 += -2, ch1 += 6.  f_s = [13, 6, 10] / 2 = [6.5, 3, 5].
    #   teacher (Tt = 1, Vt = 4): [2, -3, -1, -5] keeps ch0 = 2, ch2 = -1, sum 1 -> f_t = [2, 0, -1, 0].
    #   sorted, padded to 4: [6.5, 5, 3, 0] vs [2, 0, 0, -1] -> 4.5 + 5 + 3 + 1 = 13.5.
    # Sample 2: student [0, 1, 4] (valid) keeps ch2 = 4, ch1 = 1, sum 5 -> f_s = [0, 5, 20]; the second position is
    #   masked.  teacher [1, 3, 2, 0] keeps ch1 = 3, ch2 = 2, sum 5 -> f_t = [0, 15, 10, 0].
    #   sorted: [20, 5, 0, 0] vs [15, 10, 0, 0] -> 10.
    # Sample 3: all masked on both sides, leaves the mean.  GLD = (13.5 + 10) / 2 = 11.75.
    # Without normalization sample 1 has f_s = [13, 6, 10]: [13, 10, 6, 0] vs [2, 0, 0, -1] -> 28; GLD = 19.
    student = torch.tensor(
        [[[3.0, -1.0, 2.0], [1.0, -3.0, -5.0]], [[0.0, 1.0, 4.0], [100.0, 50.0, 0.0]], [[1.0, 2.0, 3.0]] * 2]
    )
    teacher = torch.tensor([[[2.0, -3.0, -1.0, -5.0]], [[1.0, 3.0, 2.0, 0.0]], [[9.0, 8.0, 7.0, 6.0]]])
    s_mask = torch.tensor([[True, True], [True, False], [False, False]])
    t_mask = torch.tensor([[True], [True], [False]])
    assert GraphOnLogitsLoss(2, "none")(student, teacher, s_mask, t_mask).item() == pytest.approx(11.75, rel=1e-7)
    assert GraphOnLogitsLoss(2, "none", False)(student, teacher, s_mask, t_mask).item() == pytest.approx(19.0, rel=1e-7)


def test_pinned_golden_value_zscore() -> None:
    # k = 2, V = 3.  Student rows [0, 1, 2] and [5, 3, 4] have mean 1 resp. 4 and unbiased std 1:
    #   z = [-1, 0, 1] / (1 + 1e-7) keeps ch2 = a, ch1 = 0 (a = 1 / (1 + 1e-7)), sum a -> ch2 += a^2;
    #   z = [1, -1, 0] / (1 + 1e-7) keeps ch0 = a, ch2 = 0, sum a -> ch0 += a^2.  f_s = [a^2, 0, a^2] / 2.
    # Teacher row [10, 30, 20]: mean 20, std 10, z = [-1, 1, 0] * c with c = 10 / (10 + 1e-7) = 1 / (1 + 1e-8);
    #   keeps ch1 = c, ch2 = 0, sum c -> f_t = [0, c^2, 0].
    # Sorted: [a^2/2, a^2/2, 0] vs [c^2, 0, 0] -> (c^2 - a^2/2) + a^2/2 = c^2 = 1 / (1 + 1e-8)^2.
    student = torch.tensor([[[0.0, 1.0, 2.0], [5.0, 3.0, 4.0]]])
    teacher = torch.tensor([[[10.0, 30.0, 20.0]]])
    loss = GraphOnLogitsLoss(top_k=2)(student, teacher)
    assert loss.item() == pytest.approx(1.0 / (1.0 + 1e-8) ** 2, rel=1e-7)


@pytest.mark.parametrize("batch", [0, 3])
def test_all_masked_batch_gives_zero_and_finite_zero_gradients(batch: int) -> None:
    student = logits(batch, 4, 6, seed=4).requires_grad_()
    teacher = logits(batch, 3, 5, seed=5)
    s_mask, t_mask = torch.zeros(batch, 4, dtype=torch.bool), torch.zeros(batch, 3, dtype=torch.bool)
    loss_fn = GraphOnLogitsLoss(top_k=2)
    grad = assert_zero_with_finite_gradients(lambda s, t: loss_fn(s, t, s_mask, t_mask), student, teacher)
    assert torch.equal(grad, torch.zeros_like(student))


def test_all_masked_sample_leaves_the_mean() -> None:
    student = logits(3, 4, 6, seed=6, dtype=torch.float64)
    teacher = logits(3, 3, 6, seed=7, dtype=torch.float64)
    s_mask, t_mask = masks([4, 0, 2], 4), masks([3, 0, 1], 3)
    loss_fn = GraphOnLogitsLoss(top_k=3)
    keep = torch.tensor([True, False, True])
    expected = loss_fn(student[keep], teacher[keep], s_mask[keep], t_mask[keep])
    torch.testing.assert_close(loss_fn(student, teacher, s_mask, t_mask), expected, rtol=1e-14, atol=0)


def test_no_gradient_reaches_the_teacher() -> None:
    loss_fn = GraphOnLogitsLoss(top_k=2)
    # the contract's (3, 5) logits as one sequence of 3 positions
    assert_no_gradient_reaches_the_teacher(lambda s, t: loss_fn(s[None], t[None]), seed=8)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_bf16_inputs_give_fp32_result_of_the_rounded_values(transform: str) -> None:
    # distinct multiples of 1/8 per row are exact in bf16: no ties in the top-k, whatever the kernel's tie order
    generator = torch.Generator().manual_seed(9)
    values = torch.stack([torch.randperm(100, generator=generator) for _ in range(2 * 8 + 2 * 6)]) - 50.0
    student = (values[:16] / 8).reshape(2, 8, 100).bfloat16().requires_grad_()
    teacher = (values[16:] / 8).reshape(2, 6, 100).bfloat16()
    s_mask, t_mask = masks([8, 5], 8), masks([6, 2], 6)
    loss_fn = GraphOnLogitsLoss(top_k=10, transform=transform)

    value = loss_fn(student, teacher, s_mask, t_mask)
    assert value.dtype == torch.float32
    fp32 = loss_fn(student.detach().float(), teacher.float(), s_mask, t_mask)
    torch.testing.assert_close(value, fp32, rtol=1e-6, atol=1e-7)
    expected = reference_gld(student.detach(), teacher, s_mask, t_mask, 10, transform)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    value.backward()
    assert student.grad.dtype == torch.bfloat16
    assert torch.isfinite(student.grad.float()).all()
    assert student.grad.float().abs().sum() > 0


# ---------------------------------------------------------------- docs/methods.md, section 6 consequences


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_zero_when_student_equals_teacher(transform: str) -> None:
    student = logits(3, 6, 11, seed=10).requires_grad_()
    mask = masks([6, 4, 1], 6)
    loss = GraphOnLogitsLoss(top_k=4, transform=transform)(student, student.detach().clone(), mask, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_invariant_to_relabelling_vocabulary_channels(transform: str) -> None:
    student = logits(3, 5, 12, seed=11, dtype=torch.float64)
    teacher = logits(3, 4, 8, seed=12, dtype=torch.float64)
    s_mask, t_mask = masks([5, 3, 1], 5), masks([4, 4, 2], 4)
    loss_fn = GraphOnLogitsLoss(top_k=3, transform=transform)
    s_perm = torch.randperm(12, generator=torch.Generator().manual_seed(13))
    t_perm = torch.randperm(8, generator=torch.Generator().manual_seed(14))
    expected = loss_fn(student, teacher, s_mask, t_mask)
    torch.testing.assert_close(loss_fn(student[..., s_perm], teacher, s_mask, t_mask), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss_fn(student, teacher[..., t_perm], s_mask, t_mask), expected, rtol=1e-13, atol=0)


def test_different_vocabularies_and_lengths() -> None:
    student = logits(2, 5, 7, seed=15, dtype=torch.float64)
    teacher = logits(2, 3, 11, seed=16, dtype=torch.float64)
    s_mask, t_mask = masks([5, 2], 5), masks([3, 3], 3)
    loss_fn = GraphOnLogitsLoss(top_k=3, transform="none")
    value = loss_fn(student, teacher, s_mask, t_mask)
    torch.testing.assert_close(value, reference_gld(student, teacher, s_mask, t_mask, 3, "none"))
    # channels that are never in a top-k are isolated nodes: extra vocabulary of that kind changes nothing
    unused = torch.full((2, 3, 20), -1e4, dtype=torch.float64)
    torch.testing.assert_close(loss_fn(student, torch.cat([teacher, unused], -1), s_mask, t_mask), value)
    # the normalized graph is a per-position average: repeating the teacher's sequence leaves it unchanged
    repeated = loss_fn(student, teacher.repeat(1, 2, 1), s_mask, t_mask.repeat(1, 2))
    torch.testing.assert_close(repeated, value, rtol=1e-13, atol=0)
    assert value > 0


def test_top_k_above_the_vocabulary_keeps_every_channel() -> None:
    student = logits(2, 3, 4, seed=17, dtype=torch.float64)
    teacher = logits(2, 3, 6, seed=18, dtype=torch.float64)
    value = GraphOnLogitsLoss(top_k=10, transform="softmax")(student, teacher)
    torch.testing.assert_close(value, reference_gld(student, teacher, k=10, transform="softmax"))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_compact_degrees_are_the_dense_graphs_row_sums(transform: str) -> None:
    rows = logits(1, 6, 9, seed=19, dtype=torch.float64)
    mask = masks([4], 6)
    compact = weighted_degrees(*topk_transform(rows, 3, transform), mask)[0]  # (T*k,): nonzero degrees, then zeros
    dense = dense_graph(rows[0], mask[0], 3, transform).sum(dim=1)  # (V,)
    assert (compact != 0).sum() == (dense != 0).sum()
    assert not torch.isnan(compact).any()
    torch.testing.assert_close(compact[compact != 0].sort().values, dense[dense != 0].sort().values)


def test_topk_transform_equals_the_dense_transform_at_the_top_channels() -> None:
    rows = logits(3, 4, 50, seed=20)
    values, index = topk_transform(rows, 7, "zscore")
    dense_values, dense_index = zscore(rows).topk(7, dim=-1)  # the project's `zscore`, built densely
    assert torch.equal(index, dense_index)
    assert torch.equal(values, dense_values)  # the same ops at the kept channels: bitwise equal
    values, index = topk_transform(rows, 7, "softmax")
    torch.testing.assert_close(values, torch.softmax(rows, -1).gather(-1, index), rtol=1e-6, atol=1e-9)


def full_sorted_l1(f_s: torch.Tensor, f_t: torch.Tensor, width: int) -> torch.Tensor:
    """Section 6 step 4 literally: zero-pad both vectors to `width`, sort descending, L1."""
    f_s = torch.cat([f_s, f_s.new_zeros(width - len(f_s))]).sort(descending=True).values
    f_t = torch.cat([f_t, f_t.new_zeros(width - len(f_t))]).sort(descending=True).values
    return (f_s - f_t).abs().sum()


def test_compact_sorted_l1_equals_sorting_the_full_zero_padded_vectors() -> None:
    # negative degrees sort below the padding zeros; the compact form must give the same value, for every padded
    # length, including when the student's negatives and the teacher's positives overlap in position
    cases = [
        ([3.0, -1.0, 2.0], [1.0, 0.5]),
        ([-3.0, -2.0, -1.0], [1.0, 2.0, 3.0]),  # padded to 3: each position compares a negative with a positive
        ([0.0, -2.0, 5.0, 0.0], [-1.0, -4.0, 0.0]),
        ([0.0, 0.0], [0.0]),
    ]
    generator = torch.Generator().manual_seed(21)
    for _ in range(20):
        cases.append((torch.randn(6, generator=generator).tolist(), torch.randn(4, generator=generator).tolist()))
    for f_s, f_t in cases:
        s, t = torch.tensor(f_s, dtype=torch.float64), torch.tensor(f_t, dtype=torch.float64)
        compact = sorted_l1(s[None], t[None])[0]
        for width in (max(len(s), len(t)), 7, 30):
            torch.testing.assert_close(compact, full_sorted_l1(s, t, width), rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- the Gromov-Wasserstein lower bound
#
# Let A_s, A_t be the two (normalized) graphs, zero-padded to n nodes (padding nodes are isolated: degree 0), with
# degrees f_s(i) = sum_j A_s[i, j] and f_t. For any permutation pi of the n nodes,
#     sum_i |f_s(i) - f_t(pi(i))| = sum_i |sum_j (A_s[i, j] - A_t[pi(i), pi(j)])|
#                                 <= sum_i sum_j |A_s[i, j] - A_t[pi(i), pi(j)]|
# (pi is a bijection, so sum_j A_t[pi(i), pi(j)] = f_t(pi(i)); then the triangle inequality). The left side is at
# least min_pi sum_i |f_s(i) - f_t(pi(i))|, and for 1-D features that minimum is attained by matching both lists in
# sorted order (the monotone coupling is optimal for the L1 cost on the line), i.e. it is GLD. Minimizing the right
# side over pi:
#     GLD <= GW_perm := min_pi sum_{i,j} |A_s[i, j] - A_t[pi(i), pi(j)]|,
# Gromov-Wasserstein with L1 cost restricted to permutation couplings, unnormalized: with uniform marginals 1/n a
# permutation coupling has entries 1/n, so the usual normalized GW objective is GW_perm / n^2 and GLD / n^2 bounds
# that. (The same steps with a general coupling T, sum_{kl} |a_ik - b_jl| T_kl >= |f_s(i) - f_t(j)| / n, bound GW
# over all couplings: GLD / n^2 <= min_T sum_{ijkl} |A_s[i, k] - A_t[j, l]| T_ij T_kl; the benchmark checks that.)


def brute_force_gw_perm(graph_s: torch.Tensor, graph_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min over permutations of sum_ij |A_s[i, j] - A_t[pi(i), pi(j)]|, min over permutations of sum_i
    |f_s(i) - f_t(pi(i))|) for two n x n graphs, every permutation at once."""
    n = graph_s.shape[0]
    perms = torch.tensor(list(itertools.permutations(range(n))))  # (n!, n)
    permuted = graph_t[perms[:, :, None], perms[:, None, :]]  # (n!, n, n): A_t[pi(i), pi(j)]
    gw = (graph_s[None] - permuted).abs().sum(dim=(1, 2)).min()
    degrees = (graph_s.sum(1)[None] - graph_t.sum(1)[perms]).abs().sum(dim=1).min()
    return gw, degrees


def padded(graph: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(graph, (0, n - graph.shape[0], 0, n - graph.shape[0]))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_lower_bound_of_gromov_wasserstein_over_permutations(transform: str) -> None:
    generator = torch.Generator().manual_seed(22)
    for trial in range(6):
        vs, vt = [(7, 7), (5, 7), (6, 4), (3, 3), (7, 5), (6, 6)][trial]
        ts, tt = torch.randint(1, 5, (2,), generator=generator).tolist()
        k = int(torch.randint(1, 4, (1,), generator=generator))
        student = logits(1, ts, vs, seed=100 * trial + 23, dtype=torch.float64)
        teacher = logits(1, tt, vt, seed=100 * trial + 24, dtype=torch.float64)
        gld = GraphOnLogitsLoss(top_k=k, transform=transform)(student, teacher)
        n = max(vs, vt)
        graph_s = padded(dense_graph(student[0], None, k, transform), n)
        graph_t = padded(dense_graph(teacher[0], None, k, transform), n)
        gw_perm, degree_matching = brute_force_gw_perm(graph_s, graph_t)
        assert gld <= gw_perm + 1e-12
        # the sorted L1 is the best permutation matching of the degrees
        torch.testing.assert_close(gld, degree_matching, rtol=1e-12, atol=1e-12)
        assert math.isfinite(gw_perm.item())


# ---------------------------------------------------------------- construction and checks


def test_constructor_is_typed_documented_and_registered() -> None:
    params = assert_constructor_annotated_and_documented(GraphOnLogitsLoss, ["top_k", "transform", "normalize"])
    assert [p.default for p in params] == [10, "zscore", True]
    assert LOSSES.get("gld") is GraphOnLogitsLoss


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"transform": "softmx"}, "transform"),
        ({"normalize": 1}, "normalize"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GraphOnLogitsLoss(**kwargs)


def test_invalid_shapes_raise() -> None:
    loss_fn = GraphOnLogitsLoss()
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        loss_fn(torch.zeros(2, 5), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="batch sizes"):
        loss_fn(torch.zeros(2, 3, 5), torch.zeros(3, 3, 5))
    with pytest.raises(ValueError, match="student_mask"):
        loss_fn(torch.zeros(2, 3, 5), torch.zeros(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher_mask"):
        loss_fn(torch.zeros(2, 3, 5), torch.zeros(2, 4, 5), None, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="zscore"):
        loss_fn(torch.zeros(2, 3, 1), torch.zeros(2, 4, 5))
