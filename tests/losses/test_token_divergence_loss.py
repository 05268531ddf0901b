"""TokenDivergenceLoss (docs/methods.md, section 5) through the loss contract (tests/losses/contract.py), plus its
chunking, fused LM head, padded vocabularies and normalization."""

from __future__ import annotations

import math

import pytest
import torch

from losses import TokenDivergenceLoss
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits
from tests.losses.token_reference import CASES, DIVERGENCES, B, T, V, loss_and_grad, naive_divergence, token_labels


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
    from distill.tasks.loss_terms import LOSSES

    assert LOSSES.get("token_kl") is TokenDivergenceLoss
