"""TokenDivergenceLoss (methods.md section 5) through the per-loss template of style.md item 4, plus its chunking,
fused LM head, padded vocabularies and normalization."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from losses import TokenDivergenceLoss
from losses.token_divergence import PAD_MASS_TOLERANCE
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd"]
# (divergence, beta): every divergence, JSD at an inner beta and at both special-cased ends
CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.0), ("jsd", 1.0), ("tvd", 0.5)]
B, T, V = 2, 5, 7


def token_labels(batch: int, steps: int, seed: int, masked: tuple[tuple[int, int], ...] = ((0, 1), (1, 3))):
    """Seeded (batch, steps) labels with the `masked` positions set to -100."""
    labels = torch.randint(0, V, (batch, steps), generator=torch.Generator().manual_seed(seed))
    for b, t in masked:
        labels[b, t] = -100
    return labels


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """`sum p log(p / q)` with `xlogy` (p log q, 0 where p = 0): the 0 log 0 = 0 convention of a KL."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum()


def naive_divergence(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    divergence: str,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Float64 reference written from the formulas, one token at a time, plain autograd; mean over valid tokens."""
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for s_seq, t_seq, y_seq in zip(student.double(), teacher.double(), labels, strict=True):
        for s_row, t_row, y in zip(s_seq, t_seq, y_seq, strict=True):
            if y == -100:
                continue
            count += 1
            s_exp = torch.exp(s_row / temperature - (s_row / temperature).max())
            t_exp = torch.exp(t_row / temperature - (t_row / temperature).max())
            p_s, p_t = s_exp / s_exp.sum(), t_exp / t_exp.sum()
            if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
                value = kl(p_t, p_s)
            elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
                value = kl(p_s, p_t)
            elif divergence == "jsd":
                m = beta * p_t + (1 - beta) * p_s
                value = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
            else:
                value = 0.5 * (p_t - p_s).abs().sum()
            total = total + value
    return total / max(count, 1)


def loss_and_grad(loss_fn, student, teacher, labels, upstream: float = UPSTREAM):
    """Loss value and the student's gradient of `upstream * loss`."""
    student = student.detach().clone().requires_grad_()
    value = loss_fn(student, teacher, labels)
    (upstream * value).backward()
    return value.detach(), student.grad


@pytest.mark.parametrize(("divergence", "beta"), CASES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_float64_reference_in_value_and_gradient(divergence: str, beta: float, temperature: float) -> None:
    # (B, T, V) with masked tokens, UPSTREAM backpropagated
    student = logits(B, T, V, seed=0, dtype=torch.float64)
    teacher = logits(B, T, V, seed=1, dtype=torch.float64)
    labels = token_labels(B, T, seed=2)
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=temperature, chunk_size=3)
    value, grad = loss_and_grad(loss_fn, student, teacher, labels)
    ref_value, ref_grad = loss_and_grad(
        lambda s, t, y: naive_divergence(s, t, y, divergence, beta, temperature), student, teacher, labels
    )
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert torch.all(grad[0, 1] == 0) and torch.all(grad[1, 3] == 0)  # masked: no gradient
    # the shared contract on (N, V) logits with (N,) labels, none masked
    every = torch.zeros(5, dtype=torch.long)
    contract.assert_matches_reference_in_value_and_gradient(
        lambda s, t: loss_fn(s, t, every),
        lambda s, t: naive_divergence(s[None], t[None], every[None], divergence, beta, temperature),
        seed=3,
    )


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_chunked_equals_unchunked_and_reference_in_fp32(divergence: str, beta: float) -> None:
    student, teacher = logits(3, 6, 50, seed=3), logits(3, 6, 50, seed=4)
    labels = token_labels(3, 6, seed=5, masked=((0, 0), (1, 2), (2, 5)))  # N = 15 valid tokens
    ref_value, ref_grad = loss_and_grad(
        lambda s, t, y: naive_divergence(s, t, y, divergence, beta, 1.5), student.double(), teacher, labels
    )
    whole = TokenDivergenceLoss(divergence, beta=beta, temperature=1.5)
    value, grad = loss_and_grad(whole, student, teacher, labels)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    for chunk_size in [1, 4, 7, 15, 100]:  # 4 and 7 do not divide N = 15
        chunked = TokenDivergenceLoss(divergence, beta=beta, temperature=1.5, chunk_size=chunk_size)
        c_value, c_grad = loss_and_grad(chunked, student, teacher, labels)
        torch.testing.assert_close(c_value, value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c_grad, grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_gradcheck_float64_through_the_autograd_function(divergence: str, beta: float) -> None:
    student = logits(2, 3, 5, seed=6, dtype=torch.float64).requires_grad_()
    teacher = logits(2, 3, 5, seed=7, dtype=torch.float64)
    labels = token_labels(2, 3, seed=8, masked=((1, 1),))
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=1.3, chunk_size=2)
    assert torch.autograd.gradcheck(lambda s: loss_fn(s, teacher, labels), (student,))
    contract.assert_gradcheck_wrt_student(lambda s, t: loss_fn(s, t, torch.zeros(s.shape[0], dtype=torch.long)), seed=9)


def golden_inputs(scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three positions, V = 2: a valid one where the models differ, a masked one, a valid one where they agree."""
    ln3 = math.log(3.0)
    student = torch.tensor([[[0.0, 0.0], [9.0, -4.0], [1.0, 1.0]]]) * scale
    teacher = torch.tensor([[[ln3, 0.0], [-7.0, 3.0], [5.0, 5.0]]]) * scale
    return student, teacher, torch.tensor([[1, -100, 0]])


# Token 1: p_s = [1/2, 1/2], p_t = [3/4, 1/4] (teacher logits [ln 3, 0]). Token 3: both uniform, divergence 0.
# The token in between is masked. So each loss is (token 1's divergence + 0) / 2.
# forward KL: 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln 3 - ln 2 = 0.130812035941137
# reverse KL: 1/2 ln(2/3) + 1/2 ln 2 = ln 2 - 1/2 ln 3 = 0.1438410362258904
# JSD(1/2): m = [5/8, 3/8]; 1/2 KL(p_t || m) + 1/2 KL(p_s || m)
#   = 3/8 ln(6/5) + 1/8 ln(2/3) + 1/4 ln(4/5) + 1/4 ln(4/3) = 0.033822075568605205
# TVD: 1/2 (|3/4 - 1/2| + |1/4 - 1/2|) = 1/4
GOLDEN = {"forward_kl": 0.130812035941137, "reverse_kl": 0.1438410362258904, "jsd": 0.033822075568605205, "tvd": 0.25}


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [None, 1])
def test_pinned_golden_value(divergence: str, chunk_size: int | None) -> None:
    expected = GOLDEN[divergence] / 2
    loss = TokenDivergenceLoss(divergence, beta=0.5, chunk_size=chunk_size)(*golden_inputs())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the same distributions at T = 2 from doubled logits: no T^2 factor
    loss_t2 = TokenDivergenceLoss(divergence, beta=0.5, temperature=2.0, chunk_size=chunk_size)(*golden_inputs(2.0))
    assert loss_t2.item() == pytest.approx(expected, rel=1e-6)


def test_forward_kl_is_the_true_kl_not_the_cross_entropy() -> None:
    student, teacher, labels = golden_inputs()
    loss = TokenDivergenceLoss("forward_kl")(student, student.clone(), labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)  # cross-entropy would be the entropy ln 2 / 2 here


@pytest.mark.parametrize(("divergence", "beta"), CASES)
@pytest.mark.parametrize("fused", [False, True])
def test_all_masked_batch_gives_zero_and_finite_zero_gradients(divergence: str, beta: float, fused: bool) -> None:
    labels = torch.full((2, 3), -100)
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, chunk_size=2)
    teacher = logits(2, 3, 6, seed=10)
    if fused:
        hidden = logits(2, 3, 4, seed=11).requires_grad_()
        weight = logits(6, 4, seed=12).requires_grad_()
        value = loss_fn.fused(hidden, weight, teacher, labels)
        grads = torch.autograd.grad(value, (hidden, weight))
    else:
        student = logits(2, 3, 6, seed=11).requires_grad_()
        value = loss_fn(student, teacher, labels)
        grads = torch.autograd.grad(value, (student,))
    assert value.item() == 0.0
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.all(grad == 0)
    # the contract's empty batch: (0, 5) logits with (0,) labels
    grad = contract.assert_zero_with_finite_gradients(lambda s, t: loss_fn(s, t, torch.zeros(0, dtype=torch.long)))
    assert grad.abs().sum() == 0


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_no_gradient_reaches_the_teacher(divergence: str, beta: float) -> None:
    loss_fn = TokenDivergenceLoss(divergence, beta=beta)
    contract.assert_no_gradient_reaches_the_teacher(
        lambda s, t: loss_fn(s, t, torch.zeros(3, dtype=torch.long)), seed=13
    )
    teacher = logits(B, T, V, seed=14).requires_grad_()
    hidden, weight = logits(B, T, 3, seed=15).requires_grad_(), logits(V, 3, seed=16).requires_grad_()
    (loss_fn(logits(B, T, V, seed=17).requires_grad_(), teacher, token_labels(B, T, 18))).backward()
    loss_fn.fused(hidden, weight, teacher, token_labels(B, T, 18)).backward()
    assert teacher.grad is None
    assert hidden.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_bf16_inputs_give_fp32_result_of_the_rounded_values(divergence: str, beta: float) -> None:
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=2.0, chunk_size=5)
    labels = torch.zeros(16, dtype=torch.long)
    contract.assert_bf16_inputs_give_fp32_result(
        lambda s, t: loss_fn(s, t, labels),
        lambda s, t: naive_divergence(s[None], t[None], labels[None], divergence, beta, 2.0),
        seed=19,
    )


def test_jsd_ends_are_forward_and_reverse_kl_exactly() -> None:
    student, teacher, labels = logits(B, T, V, seed=20), logits(B, T, V, seed=21), token_labels(B, T, 22)
    for beta, same in [(0.0, "forward_kl"), (1.0, "reverse_kl")]:
        jsd = TokenDivergenceLoss("jsd", beta=beta, temperature=1.5)
        other = TokenDivergenceLoss(same, temperature=1.5)
        value, grad = loss_and_grad(jsd, student, teacher, labels)
        other_value, other_grad = loss_and_grad(other, student, teacher, labels)
        assert torch.equal(value, other_value) and torch.equal(grad, other_grad)
    # the mixture formula itself tends to 0 at the ends, which is why the ends are special cases
    near_zero = TokenDivergenceLoss("jsd", beta=1e-6)(student, teacher, labels)
    assert 0 < near_zero.item() < 1e-4


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5, 0.9])
def test_jsd_lies_between_zero_and_the_entropy_of_the_weights(beta: float) -> None:
    # JSD_beta = H(m) - beta H(p_t) - (1 - beta) H(p_s) <= h(beta) = -beta ln beta - (1 - beta) ln(1 - beta) <= ln 2,
    # with equality for disjoint supports; >= 0 by Jensen (H is concave).
    bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
    labels = token_labels(B, T, 23)
    loss_fn = TokenDivergenceLoss("jsd", beta=beta)
    for scale in [1.0, 5.0, 200.0]:
        value = loss_fn(logits(B, T, V, seed=24, scale=scale), logits(B, T, V, seed=25, scale=scale), labels).item()
        assert 0.0 < value <= bound + 1e-6 <= math.log(2) + 1e-6
    # nearly disjoint supports reach the bound: teacher on token 0, student on token 1
    student, teacher = torch.full((1, 1, V), -1e4), torch.full((1, 1, V), -1e4)
    student[..., 1], teacher[..., 0] = 0.0, 0.0
    assert loss_fn(student, teacher, torch.zeros(1, 1, dtype=torch.long)).item() == pytest.approx(bound, rel=1e-5)
    assert loss_fn(teacher, teacher, torch.zeros(1, 1, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-7)


def test_tvd_lies_in_zero_one() -> None:
    loss_fn = TokenDivergenceLoss("tvd")
    labels = token_labels(B, T, 26)
    for scale in [0.1, 3.0, 100.0]:
        value = loss_fn(logits(B, T, V, seed=27, scale=scale), logits(B, T, V, seed=28, scale=scale), labels).item()
        assert 0.0 < value <= 1.0
    student, teacher = torch.full((1, 1, V), -1e4), torch.full((1, 1, V), -1e4)
    student[..., 1], teacher[..., 0] = 0.0, 0.0
    assert loss_fn(student, teacher, torch.zeros(1, 1, dtype=torch.long)).item() == pytest.approx(1.0)


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_temperature_divides_the_logits_and_the_gradient_without_t_squared(divergence: str, beta: float) -> None:
    # L_T(s, t) = L_1(s / T, t / T), so dL_T/ds = dL_1/dz at z = s / T, divided by T. No T^2 anywhere.
    student, teacher = logits(B, T, V, seed=29, dtype=torch.float64), logits(B, T, V, seed=30, dtype=torch.float64)
    labels, temperature = token_labels(B, T, 31), 3.0
    value, grad = loss_and_grad(TokenDivergenceLoss(divergence, beta, temperature), student, teacher, labels)
    unit_value, unit_grad = loss_and_grad(
        TokenDivergenceLoss(divergence, beta, 1.0), student / temperature, teacher / temperature, labels
    )
    torch.testing.assert_close(value, unit_value, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, unit_grad / temperature, rtol=1e-10, atol=1e-14)
    if divergence == "forward_kl":  # closed form: (p_s - p_t) / T per valid token, / N
        valid = (labels != -100)[..., None]
        p_s, p_t = torch.softmax(student / temperature, -1), torch.softmax(teacher / temperature, -1)
        expected = UPSTREAM * torch.where(valid, p_s - p_t, 0.0) / temperature / valid.sum()
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("divergence", "beta"), CASES)
def test_half_batches_sums_and_counts_combine_to_the_full_batch(divergence: str, beta: float) -> None:
    student, teacher = logits(4, T, V, seed=32), logits(4, T, V, seed=33)
    labels = token_labels(4, T, 34, masked=((0, 0), (0, 1), (0, 2), (3, 4)))  # halves with 7 and 9 valid tokens
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, chunk_size=3)
    full = loss_fn(student, teacher, labels)
    halves_parts = [loss_fn.sum_and_count(student[h], teacher[h], labels[h]) for h in (slice(0, 2), slice(2, 4))]
    sums, counts = zip(*halves_parts, strict=True)
    assert counts == (7, 9)
    torch.testing.assert_close(sum(sums) / sum(counts), full)
    halves = [loss_fn(student[h], teacher[h], labels[h]) for h in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close((halves[0] * 7 + halves[1] * 9) / 16, full)
    assert not torch.allclose((halves[0] + halves[1]) / 2, full)  # a mean of means would differ


@pytest.mark.parametrize(("divergence", "beta"), CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_fused_lm_head_equals_unfused_in_value_and_gradients(divergence: str, beta: float, bias: bool) -> None:
    hidden = logits(B, T, 4, seed=35, dtype=torch.float64).requires_grad_()
    weight = logits(V, 4, seed=36, scale=1.0, dtype=torch.float64).requires_grad_()
    b = logits(V, seed=37, dtype=torch.float64).requires_grad_() if bias else None
    teacher, labels = logits(B, T, V, seed=38, dtype=torch.float64), token_labels(B, T, 39)
    params = [p for p in (hidden, weight, b) if p is not None]
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=1.5)
    value = loss_fn(F.linear(hidden, weight, b), teacher, labels)
    expected = torch.autograd.grad(UPSTREAM * value, params)
    for chunk_size in [None, 1, 3]:
        fused = TokenDivergenceLoss(divergence, beta=beta, temperature=1.5, chunk_size=chunk_size)
        fused_value = fused.fused(hidden, weight, teacher, labels, lm_head_bias=b)
        torch.testing.assert_close(fused_value, value, rtol=1e-12, atol=1e-14)
        for got, want in zip(torch.autograd.grad(UPSTREAM * fused_value, params), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    gradcheck_fn = TokenDivergenceLoss(divergence, beta=beta, chunk_size=4).fused
    check = partial(torch.autograd.gradcheck, fast_mode=True)  # a random projection of the Jacobian: 75 inputs
    assert check(lambda *p: gradcheck_fn(p[0], p[1], teacher, labels, *p[2:]), tuple(params))


def test_fused_lm_head_in_fp32_with_a_frozen_head() -> None:
    hidden, weight = logits(B, T, 8, seed=40).requires_grad_(), logits(V, 8, seed=41, scale=0.5)
    teacher, labels = logits(B, T, V, seed=42), token_labels(B, T, 43)
    loss_fn = TokenDivergenceLoss("jsd", chunk_size=3)
    value = loss_fn(hidden @ weight.T, teacher, labels)
    (expected,) = torch.autograd.grad(value, hidden)
    fused = loss_fn.fused(hidden, weight, teacher, labels)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(fused, hidden)[0], expected, rtol=1e-5, atol=1e-7)


def test_fused_lm_head_with_a_bf16_head_matches_the_unfused_loss() -> None:
    hidden = logits(B, T, 16, seed=70, scale=1.0, dtype=torch.bfloat16).requires_grad_()
    weight = logits(V, 16, seed=71, scale=1.0, dtype=torch.bfloat16).requires_grad_()
    teacher, labels = logits(B, T, V, seed=72, dtype=torch.bfloat16), token_labels(B, T, 73)
    loss_fn = TokenDivergenceLoss("forward_kl", chunk_size=4)
    value = loss_fn(F.linear(hidden, weight), teacher, labels)  # bf16 logits, as the model's head gives them
    expected = torch.autograd.grad(value, (hidden, weight))
    fused = loss_fn.fused(hidden, weight, teacher, labels)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, value, rtol=1e-6, atol=1e-7)
    for got, want in zip(torch.autograd.grad(fused, (hidden, weight)), expected, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=1e-3)


def test_inputs_are_not_modified() -> None:
    # the chunk's rows are overwritten in place, but they are copies
    student, teacher, labels = (
        logits(B, T, V, seed=74).requires_grad_(),
        logits(B, T, V, seed=75),
        token_labels(B, T, 76),
    )
    hidden, weight = logits(B, T, 4, seed=77).requires_grad_(), logits(V, 4, seed=78).requires_grad_()
    copies = [x.detach().clone() for x in (student, teacher, hidden, weight)]
    for divergence, beta in CASES:
        loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=2.0, chunk_size=3)
        loss_fn(student, teacher, labels).backward()
        loss_fn.fused(hidden, weight, teacher, labels).backward()
    for x, copy in zip((student, teacher, hidden, weight), copies, strict=True):
        assert torch.equal(x.detach(), copy)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd", "tvd"])
def test_teacher_ruling_out_shared_tokens_gives_finite_values(divergence: str) -> None:
    # -inf teacher logits inside the shared vocabulary (p_t = 0 there): the p log p terms are 0, not NaN
    student, teacher, labels = logits(B, T, V, seed=79), logits(B, T, V, seed=80), token_labels(B, T, 81)
    teacher[..., :2] = float("-inf")
    value, grad = loss_and_grad(TokenDivergenceLoss(divergence, chunk_size=3), student, teacher, labels)
    ref_teacher = teacher.clone()
    ref_teacher[..., :2] = -1e4  # p_t = exp(-1e4) = 0 in float64 as well
    ref_value, ref_grad = loss_and_grad(
        lambda s, t, y: naive_divergence(s, t, y, divergence), student.double(), ref_teacher, labels
    )
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value.double(), ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    # reverse KL is infinite there, as it should be: the student puts mass where the teacher has none
    assert TokenDivergenceLoss("reverse_kl")(student, teacher, labels).item() == float("inf")


def padded(tensor: torch.Tensor, extra: int, value: float) -> torch.Tensor:
    return torch.cat([tensor, torch.full((*tensor.shape[:-1], extra), value, dtype=tensor.dtype)], dim=-1)


@pytest.mark.parametrize(("divergence", "beta"), CASES)
@pytest.mark.parametrize("pad_value", [float("-inf"), -1e4])
def test_padded_vocabulary_gives_the_unpadded_loss_and_gradient(divergence: str, beta: float, pad_value: float) -> None:
    student, teacher, labels = logits(B, T, V, seed=44), logits(B, T, V, seed=45), token_labels(B, T, 46)
    loss_fn = TokenDivergenceLoss(divergence, beta=beta, temperature=2.0, chunk_size=4)
    value, grad = loss_and_grad(loss_fn, student, teacher, labels)
    # teacher padded to V + 5: same loss, same student gradient
    pad_value_t, pad_grad_t = loss_and_grad(loss_fn, student, padded(teacher, 5, pad_value), labels)
    torch.testing.assert_close(pad_value_t, value, rtol=0, atol=0)
    torch.testing.assert_close(pad_grad_t, grad, rtol=0, atol=0)
    # student padded instead: same loss; the padded columns get no gradient
    pad_value_s, pad_grad_s = loss_and_grad(loss_fn, padded(student, 3, pad_value), teacher, labels)
    torch.testing.assert_close(pad_value_s, value, rtol=0, atol=0)
    torch.testing.assert_close(pad_grad_s[..., :V], grad, rtol=0, atol=0)
    assert torch.all(pad_grad_s[..., V:] == 0)
    # fused head with padded rows (logits -1e4 from a large negative bias)
    hidden, weight = logits(B, T, 4, seed=47).requires_grad_(), logits(V, 4, seed=48, scale=0.5)
    bias = torch.zeros(V)
    pad_weight, pad_bias = padded(weight.T, 3, 0.0).T, padded(bias, 3, -1e4)
    fused = loss_fn.fused(hidden, pad_weight, teacher, labels, lm_head_bias=pad_bias)
    torch.testing.assert_close(fused, loss_fn.fused(hidden, weight, teacher, labels, lm_head_bias=bias))


@pytest.mark.parametrize("fused", [False, True])
def test_extra_columns_with_real_mass_raise_value_error(fused: bool) -> None:
    student, teacher, labels = logits(B, T, V, seed=49), logits(B, T, V, seed=50), token_labels(B, T, 51)
    loss_fn = TokenDivergenceLoss(chunk_size=3)
    wide_teacher = torch.cat([teacher, logits(B, T, 4, seed=52)], dim=-1)  # a different tokenizer, say
    with pytest.raises(ValueError, match="differ beyond padding.*GraphOnLogitsLoss"):
        if fused:
            loss_fn.fused(logits(B, T, 3, seed=53), logits(V, 3, seed=54), wide_teacher, labels)
        else:
            loss_fn(student, wide_teacher, labels)
    with pytest.raises(ValueError, match="student's columns beyond the shared 7"):
        loss_fn(torch.cat([student, logits(B, T, 2, seed=55)], dim=-1), teacher, labels)


def test_padding_rule_is_the_softmax_mass_at_the_temperature_at_valid_positions() -> None:
    # one extra teacher column whose mass at T = 1 is exactly `mass` at every position
    teacher = torch.zeros(1, 2, V, dtype=torch.float64)  # uniform over V shared columns
    labels = torch.tensor([[0, 3]])
    student = logits(1, 2, V, seed=56, dtype=torch.float64)

    def with_mass(mass: float) -> torch.Tensor:  # exp(x) / (V + exp(x)) = mass
        return padded(teacher, 1, math.log(mass * V / (1 - mass)))

    loss_fn = TokenDivergenceLoss()
    loss_fn(student, with_mass(0.5 * PAD_MASS_TOLERANCE), labels)  # accepted
    with pytest.raises(ValueError, match="mass up to 0.0002"):
        loss_fn(student, with_mass(2 * PAD_MASS_TOLERANCE), labels)
    # at a higher temperature the same logits put more mass on the padding
    with pytest.raises(ValueError, match="differ beyond padding"):
        TokenDivergenceLoss(temperature=4.0)(student, with_mass(0.5 * PAD_MASS_TOLERANCE), labels)
    # a masked position is not checked
    noisy = with_mass(0.5 * PAD_MASS_TOLERANCE)
    noisy[0, 1, -1] = 10.0
    loss_fn(student, noisy, torch.tensor([[0, -100]]))


def test_shifted_non_contiguous_logits_work_and_match_the_contiguous_copy() -> None:
    # the causal-LM alignment: logits[:, :-1] predict labels[:, 1:]
    student, teacher = logits(B, T + 1, V, seed=57).requires_grad_(), logits(B, T + 1, V, seed=58)
    labels = token_labels(B, T + 1, seed=59)
    loss_fn = TokenDivergenceLoss("reverse_kl", chunk_size=4)
    value = loss_fn(student[:, :-1], teacher[:, :-1], labels[:, 1:])
    expected = naive_divergence(student[:, :-1].detach(), teacher[:, :-1], labels[:, 1:], "reverse_kl")
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    value.backward()
    assert torch.all(student.grad[:, -1] == 0)


def test_second_backward_through_a_retained_graph_gives_the_same_gradient() -> None:
    student, teacher, labels = (
        logits(B, T, V, seed=60).requires_grad_(),
        logits(B, T, V, seed=61),
        token_labels(B, T, 62),
    )
    value = TokenDivergenceLoss("jsd", chunk_size=3)(student, teacher, labels)
    (first,) = torch.autograd.grad(2.0 * value, student, retain_graph=True)
    (second,) = torch.autograd.grad(0.5 * value, student)
    torch.testing.assert_close(second, first / 4, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_no_grad_path_gives_the_same_value(divergence: str) -> None:
    student, teacher, labels = (
        logits(B, T, V, seed=63).requires_grad_(),
        logits(B, T, V, seed=64),
        token_labels(B, T, 65),
    )
    loss_fn = TokenDivergenceLoss(divergence, chunk_size=3)
    with torch.no_grad():
        value = loss_fn(student, teacher, labels)
        fused = loss_fn.fused(student, torch.eye(V), teacher, labels)
    assert not value.requires_grad
    torch.testing.assert_close(value, loss_fn(student, teacher, labels).detach())
    torch.testing.assert_close(fused, value)


def test_autograd_saves_only_the_inputs_not_full_size_intermediates() -> None:
    # The memory claim without a memory tracker (CPU): the graph holds no tensor that the forward pass created.
    # benchmarks/token_divergence_memory.py measures the peak memory itself.
    student, teacher, labels = (
        logits(4, 16, 50, seed=65).requires_grad_(),
        logits(4, 16, 50, seed=66),
        token_labels(4, 16, 67),
    )
    inputs = {student.data_ptr(), teacher.data_ptr()}
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        value = TokenDivergenceLoss("forward_kl", chunk_size=8)(student, teacher, labels)
    assert all(t.data_ptr() in inputs or t.numel() <= 64 * 2 for t in saved)  # inputs, and the (N, 2) positions
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        naive_value = naive_divergence(student, teacher, labels, "forward_kl")
    assert sum(t.numel() for t in saved if t.data_ptr() not in inputs) > student.numel()  # plain autograd keeps more
    torch.testing.assert_close(value.double(), naive_value.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_is_a_fraction_of_plain_autograd() -> None:
    def peak(fn) -> int:
        student = logits(2048, 8192, seed=68).cuda().requires_grad_()
        teacher, labels = logits(2048, 8192, seed=69).cuda(), torch.zeros(2048, dtype=torch.long, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn(student, teacher, labels).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    def plain(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean()

    assert peak(TokenDivergenceLoss(chunk_size=256)) < 0.3 * peak(plain)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"divergence": "kl"}, "divergence"),
        ({"divergence": "forward-kl"}, "divergence"),
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": True}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"ignore_index": 1.5}, "ignore_index"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.0}, "chunk_size"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TokenDivergenceLoss(**kwargs)


def test_shape_mismatches_raise_value_error() -> None:
    loss_fn = TokenDivergenceLoss()
    student, labels = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="teacher logits"):
        loss_fn(student, torch.zeros(2, 4, 5), labels)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(student, torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss_fn(student, torch.zeros(2, 3, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="lm_head_weight"):
        loss_fn.fused(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, 5), labels)


def test_constructor_defaults_and_registry_name() -> None:
    params = contract.assert_constructor_annotated_and_documented(
        TokenDivergenceLoss, ["divergence", "beta", "temperature", "ignore_index", "chunk_size"]
    )
    assert [p.default for p in params] == ["forward_kl", 0.5, 1.0, -100, None]
    from distill.losses_registry import LOSSES

    assert LOSSES.get("token_kl") is TokenDivergenceLoss
