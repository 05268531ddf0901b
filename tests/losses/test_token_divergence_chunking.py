"""Token divergences: the fused LM head, padded vocabularies and the chunked autograd mechanics."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from losses import TokenDivergenceLoss
from losses.token_divergence import PAD_MASS_TOLERANCE
from tests.losses.contract import UPSTREAM, logits
from tests.losses.token_reference import CASES, DIVERGENCES, B, T, V, loss_and_grad, naive_divergence, token_labels


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
