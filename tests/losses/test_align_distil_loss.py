"""AlignDistilLoss (docs/methods.md, section 7) through the loss contract (tests/losses/contract.py), plus its adaptive
coefficient, its three teacher rules and its per-sequence normalization."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import AlignDistilLoss, TokenDivergenceLoss
from losses.align_distil import ALPHA_FLOOR, adaptive_coefficient
from tests.losses import contract
from tests.losses.contract import UPSTREAM, logits

VARIANTS = ["adaptive", "fixed", "fixed_adaptive"]
B, T, V = 3, 5, 7


def response_mask(batch: int = B, steps: int = T) -> torch.Tensor:
    """(batch, steps) bool: sequence 0 from position 1 on, sequence 1 positions 2-3, sequence 2 (if any) none."""
    mask = torch.zeros(batch, steps, dtype=torch.bool)
    mask[0, 1:] = True
    if batch > 1:
        mask[1, 2:4] = True
    return mask


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def naive_align_distil(
    student: torch.Tensor,
    dpo: torch.Tensor,
    second: torch.Tensor,
    mask: torch.Tensor,
    variant: str,
    beta: float = 0.1,
    beta2: float = 10.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Float64 reference written from section 7, one token at a time, plain autograd: the mean over the sequences
    with a masked position of (sum of `c_t * KL(p_s || softmax(z* / T))` over their masked positions / their count)."""
    means = []
    for s_seq, d_seq, r_seq, m_seq in zip(student.double(), dpo.double(), second.double(), mask, strict=True):
        total, count = torch.zeros((), dtype=torch.float64), 0
        for s_row, z_d, z_2, m in zip(s_seq, d_seq, r_seq, m_seq, strict=True):
            if not m:
                continue
            z_d, z_2 = z_d.detach(), z_2.detach()
            alpha = beta2 * (softmax(z_d) - softmax(z_2)).abs().sum() + 1e-3  # temperature 1
            if variant == "adaptive":
                z_star, c = z_d + alpha * (z_d - z_2), beta / alpha
            elif variant == "fixed":
                w = beta / beta2
                z_star, c = w * z_d + (1 - w) * z_2, beta2
            else:
                z_star, c = alpha * z_d + (1 - alpha) * z_2, beta / alpha
            p_s, p_star = softmax(s_row), softmax(z_star / temperature)  # the student is untempered
            total = total + c * (p_s * (p_s.log() - p_star.log())).sum()
            count += 1
        if count:
            means.append(total / count)
    return torch.stack(means).mean() if means else torch.zeros((), dtype=torch.float64)


def three_models(seed: int, dtype: torch.dtype = torch.float64, shape: tuple[int, ...] = (B, T, V)):
    return tuple(logits(*shape, seed=seed + i, dtype=dtype) for i in range(3))


def loss_and_grad(loss_fn, student, dpo, second, mask, upstream: float = UPSTREAM):
    """Loss value and the student's gradient of `upstream * loss`."""
    student = student.detach().clone().requires_grad_()
    value = loss_fn(student, dpo, second, mask)
    (upstream * value).backward()
    return value.detach(), student.grad


def pair(loss_fn):
    """The loss as a `contract` closure on (N, V) logits: one sequence, every position masked in, second model =
    the teacher reversed along the vocabulary (so a gradient leaking through either teacher would reach `t`)."""
    return lambda s, t: loss_fn(s[None], t[None], t.flip(-1)[None], torch.ones(1, s.shape[0], dtype=torch.bool))


def naive_pair(variant: str, **kwargs):
    return lambda s, t: naive_align_distil(
        s[None], t[None], t.flip(-1)[None], torch.ones(1, s.shape[0], dtype=torch.bool), variant, **kwargs
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_float64_reference_in_value_and_gradient(variant: str, temperature: float) -> None:
    # (B, T, V) with masked positions and a sequence with none, UPSTREAM backpropagated; beta2 = 1 keeps alpha_t
    # away from both the floor and the top, so that a wrong alpha shows
    student, dpo, second = three_models(seed=0)
    mask = response_mask()
    kwargs = {"beta": 0.1, "beta2": 1.0, "temperature": temperature}
    loss_fn = AlignDistilLoss(variant=variant, **kwargs)
    value, grad = loss_and_grad(loss_fn, student, dpo, second, mask)
    ref_value, ref_grad = loss_and_grad(
        lambda s, d, r, m: naive_align_distil(s, d, r, m, variant, **kwargs), student, dpo, second, mask
    )
    assert value.dtype == torch.float64 and value > 0
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask].abs().sum(-1) > 0)  # masked out: no gradient
    contract.assert_matches_reference_in_value_and_gradient(pair(loss_fn), naive_pair(variant, **kwargs), seed=3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant: str) -> None:
    student, dpo, second = three_models(seed=6, shape=(2, 3, 5))
    mask = response_mask(2, 3)
    loss_fn = AlignDistilLoss(beta2=2.0, temperature=1.3, variant=variant)
    assert torch.autograd.gradcheck(lambda s: loss_fn(s, dpo, second, mask), (student.requires_grad_(),))
    contract.assert_gradcheck_wrt_student(pair(loss_fn), seed=9)


def golden_inputs(second_logits: list[float], dpo_logits: list[float]):
    """Two sequences, V = 2. Sequence 0: a position where the models differ (student uniform), a masked one, and one
    where all three models are uniform (loss 0). Sequence 1: all masked, so left out of the mean."""
    student = torch.tensor([[[0.0, 0.0], [9.0, -4.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 3.0], [1.0, 5.0]]])
    dpo = torch.tensor([[dpo_logits, [-7.0, 3.0], [5.0, 5.0]], [[1.0, 0.0], [0.0, 1.0], [4.0, 0.0]]])
    second = torch.tensor([[second_logits, [2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 4.0]]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    return student, dpo, second, mask


LN3 = math.log(3.0)
# Each case: (variant, beta2, second model's logits, DPO model's logits at the differing position, expected loss).
# p_s = [1/2, 1/2] there; the sequence value is (that token's loss + 0) / 2; sequence 1 is left out.
# adaptive: p_dpo = [3/4, 1/4], p_rev = [1/4, 3/4], L1 = 1, alpha = 0.999 * 1 + 1e-3 = 1; z* = 2 z_dpo - z_rev =
#   [2 ln 3, -ln 3], p* = [27/28, 1/28]; KL(p_s || p*) = 1/2 ln(14/27) + 1/2 ln 14 = ln 14 - 1/2 ln 27
#   = 0.9911388966130938; c = beta / alpha = 0.1: loss = 0.1 * 0.9911388966130938 / 2 = 0.049556944830654696
# fixed: beta2 = 0.2, w = 0.1 / 0.2 = 1/2; z* = [2 ln 3, 0] / 2 + [0, 0] / 2 = [ln 3, 0], p* = [3/4, 1/4];
#   KL = 1/2 ln(2/3) + 1/2 ln 2 = ln 2 - 1/2 ln 3 = 0.1438410362258904; c = beta2 = 0.2: loss = 0.01438410362258904
# fixed_adaptive: p_dpo = [3/4, 1/4], p_ref = [1/2, 1/2], L1 = 1/2, alpha = 1.998 / 2 + 1e-3 = 1; z* = 1 * z_dpo +
#   0 * z_ref = [ln 3, 0]; KL = 0.1438410362258904 (as above); c = 0.1 / 1: loss = 0.00719205181129452
GOLDEN = [
    ("adaptive", 0.999, [0.0, LN3], [LN3, 0.0], 0.049556944830654696),
    ("fixed", 0.2, [0.0, 0.0], [2 * LN3, 0.0], 0.01438410362258904),
    ("fixed_adaptive", 1.998, [0.0, 0.0], [LN3, 0.0], 0.00719205181129452),
]


@pytest.mark.parametrize(("variant", "beta2", "second_logits", "dpo_logits", "expected"), GOLDEN)
def test_pinned_golden_value(variant: str, beta2: float, second_logits, dpo_logits, expected: float) -> None:
    loss = AlignDistilLoss(beta=0.1, beta2=beta2, variant=variant)(*golden_inputs(second_logits, dpo_logits))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_masked_and_empty_batches_give_zero_and_finite_zero_gradients(variant: str) -> None:
    loss_fn = AlignDistilLoss(variant=variant)
    student, dpo, second = three_models(seed=10, dtype=torch.float32, shape=(2, 3, 6))
    for mask in (torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long)):
        grad = contract.assert_zero_with_finite_gradients(
            lambda s, t, m=mask: loss_fn(s, t, second, m), student.clone().requires_grad_(), dpo
        )
        assert torch.all(grad == 0)
    empty = torch.zeros(0, 4, 6)
    contract.assert_zero_with_finite_gradients(
        lambda s, t: loss_fn(s, t, t, torch.zeros(0, 4, dtype=torch.bool)), empty.clone().requires_grad_(), empty
    )
    contract.assert_zero_with_finite_gradients(pair(loss_fn))  # (0, 5) logits: a sequence of no positions


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_gradient_reaches_either_teacher(variant: str) -> None:
    loss_fn = AlignDistilLoss(beta2=1.0, variant=variant)
    contract.assert_no_gradient_reaches_the_teacher(pair(loss_fn), seed=12)
    student, dpo, second = three_models(seed=13, dtype=torch.float32)
    dpo.requires_grad_()
    second.requires_grad_()
    loss_fn(student.requires_grad_(), dpo, second, response_mask()).backward()
    assert dpo.grad is None and second.grad is None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_inputs_are_computed_in_fp32(variant: str) -> None:
    loss_fn = AlignDistilLoss(beta2=1.0, variant=variant)
    contract.assert_bf16_inputs_give_fp32_result(pair(loss_fn), naive_pair(variant, beta2=1.0), seed=14)
    # (B, T, V) bf16 student and teachers: the same fp32 value as the fp32 copies; the gradient stays bf16
    student, dpo, second = three_models(seed=15, dtype=torch.bfloat16)
    student.requires_grad_()
    value = loss_fn(student, dpo, second, response_mask())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss_fn(student.detach().float(), dpo.float(), second.float(), response_mask()))
    value.backward()
    assert student.grad.dtype == torch.bfloat16 and torch.isfinite(student.grad.float()).all()


def test_adaptive_coefficient_follows_the_formula_on_hand_made_distributions() -> None:
    ln3 = math.log(3.0)
    dpo = torch.tensor([[0.3, -1.0, 2.0], [0.0, float("-inf"), float("-inf")], [ln3, 0.0, float("-inf")]])
    second = torch.tensor([[0.3, -1.0, 2.0], [float("-inf"), 0.0, float("-inf")], [0.0, 0.0, float("-inf")]])
    alpha = adaptive_coefficient(dpo, second, beta2=10.0)
    assert ALPHA_FLOOR == 1e-3 and torch.equal(alpha[0], torch.tensor(1e-3))  # identical: the floor, exactly (fp32)
    assert alpha[1].item() == pytest.approx(10.0 * 2 + 1e-3, rel=1e-7)  # disjoint one-hot: L1 = 2, no clip
    assert alpha[2].item() == pytest.approx(10.0 * 0.5 + 1e-3, rel=1e-7)  # [3/4, 1/4, 0] vs [1/2, 1/2, 0]
    # large logits instead of -inf: L1 -> 2; the coefficient is not clipped at any beta2
    one_hot = torch.tensor([[30.0, -30.0], [-30.0, 30.0]], dtype=torch.float64)
    assert adaptive_coefficient(one_hot[0], one_hot[1], beta2=15.0).item() == pytest.approx(30.001, rel=1e-12)
    # at a temperature, the tempered distributions: [ln 9, 0] / 2 = [ln 3, 0]
    tempered = adaptive_coefficient(torch.tensor([2 * ln3, 0.0]), torch.zeros(2), beta2=10.0, temperature=2.0)
    assert tempered.item() == pytest.approx(5.001, rel=1e-6)
    # no gradient, whatever the inputs; the compute dtype is fp32 for bf16 and fp64 for fp64
    leaf = logits(4, 5, seed=16).requires_grad_()
    assert not adaptive_coefficient(leaf, leaf.flip(-1), 1.0).requires_grad
    assert adaptive_coefficient(leaf.bfloat16(), leaf.double(), 1.0).dtype == torch.float64
    assert adaptive_coefficient(leaf.bfloat16(), leaf.bfloat16(), 1.0).dtype == torch.float32


def test_identical_dpo_and_reverse_models_give_the_dpo_model_as_teacher() -> None:
    # z_dpo = z_rev: alpha_t = 1e-3 and z* = z_dpo, so the loss is (beta / 1e-3) * KL(p_s || p_dpo); with the same
    # number of masked positions per sequence the per-sequence mean equals TokenDivergenceLoss's token mean
    student, dpo, _ = three_models(seed=17, dtype=torch.float32)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 1:4] = True
    labels = torch.where(mask, 0, -100)
    value = AlignDistilLoss(beta=0.1, beta2=10.0)(student, dpo, dpo.clone(), mask)
    expected = (0.1 / 1e-3) * TokenDivergenceLoss("reverse_kl")(student, dpo, labels)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    # and at T = 2 the teacher is softmax(z_dpo / 2): the student untempered, the teacher logits halved
    value_t2 = AlignDistilLoss(beta=0.1, beta2=10.0, temperature=2.0)(student, dpo, dpo.clone(), mask)
    expected_t2 = (0.1 / 1e-3) * TokenDivergenceLoss("reverse_kl")(student, dpo / 2, labels)
    torch.testing.assert_close(value_t2, expected_t2, rtol=1e-6, atol=1e-6)


def test_fixed_variant_equals_the_geometric_mixture_closed_form() -> None:
    # theorem 1: p* ∝ p_dpo^w p_ref^(1 - w), w = beta / beta2, weighted by beta2; computed from the two distributions
    # (not their logits) and scored with TokenDivergenceLoss's reverse KL
    student, dpo, ref = three_models(seed=20)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, :2] = True
    beta, beta2 = 0.1, 0.4
    w = beta / beta2
    log_mixture = w * F.log_softmax(dpo, -1) + (1 - w) * F.log_softmax(ref, -1)  # unnormalized log p*
    expected = beta2 * TokenDivergenceLoss("reverse_kl")(student, log_mixture, torch.where(mask, 0, -100))
    value = AlignDistilLoss(beta=beta, beta2=beta2, variant="fixed")(student, dpo, ref, mask)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_sequence_is_averaged_over_its_own_positions_then_over_sequences(variant: str) -> None:
    student, dpo, second = three_models(seed=23, dtype=torch.float32)
    loss_fn = AlignDistilLoss(beta2=1.0, variant=variant)
    mask = response_mask()  # 4, 2 and 0 masked positions
    value = loss_fn(student, dpo, second, mask)
    alone = [loss_fn(student[b : b + 1], dpo[b : b + 1], second[b : b + 1], mask[b : b + 1]) for b in range(2)]
    torch.testing.assert_close(value, (alone[0] + alone[1]) / 2)  # the empty sequence 2 is left out
    one = loss_fn(student[:1], dpo[:1], second[:1], mask[:1])
    torch.testing.assert_close(alone[0], one)
    assert not torch.allclose(value, (4 * alone[0] + 2 * alone[1]) / 6)  # not the mean over all tokens
    # masked-out positions do not matter, whatever their logits
    changed = student.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(loss_fn(changed, dpo, second, mask), value)
    # integer mask: the same loss
    torch.testing.assert_close(loss_fn(student, dpo, second, mask.long()), value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variant": "aligndistil"}, "variant"),
        ({"variant": "theorem1"}, "variant"),
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta2": -1.0}, "beta2"),
        ({"beta2": float("inf")}, "beta2"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AlignDistilLoss(**kwargs)


def test_shape_mismatches_raise_value_error() -> None:
    loss_fn = AlignDistilLoss()
    x, mask = torch.zeros(2, 3, 5), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="DPO logits"):
        loss_fn(x, torch.zeros(2, 3, 6), x, mask)
    with pytest.raises(ValueError, match="second model"):
        loss_fn(x, x, torch.zeros(2, 4, 5), mask)
    with pytest.raises(ValueError, match="mask"):
        loss_fn(x, x, x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        loss_fn(x, x, x, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        loss_fn(torch.zeros(6, 5), torch.zeros(6, 5), torch.zeros(6, 5), torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="second model"):
        adaptive_coefficient(torch.zeros(3, 5), torch.zeros(3, 4), 1.0)


def test_constructor_defaults_and_registry_name() -> None:
    params = contract.assert_constructor_annotated_and_documented(
        AlignDistilLoss, ["beta", "beta2", "temperature", "variant"]
    )
    assert [p.default for p in params] == [0.1, 10.0, 1.0, "adaptive"]
    from distill.tasks.loss_terms import LOSSES

    assert LOSSES.get("align_distil") is AlignDistilLoss
