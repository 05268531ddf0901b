"""HiddenStateLoss (docs/methods.md, section 11, language models): golden values by hand, the mask, the average over
pairs and argument checks. The shared contract is in test_feature_losses.py."""

from __future__ import annotations

import pytest
import torch

from losses.hidden_state import HiddenStateLoss
from tests.losses import contract
from tests.losses.contract import logits

MASK = torch.tensor([[True, True, False], [False, True, True]])  # 4 valid positions of 6


def test_mse_golden_value_ignores_masked_positions() -> None:
    teacher = logits(2, 3, 4, seed=0)
    student = torch.where(MASK[..., None], teacher + 2.0, 1e4)  # off by 2 where valid, garbage where masked
    assert HiddenStateLoss("mse")(student, teacher, MASK).item() == pytest.approx(4.0, rel=1e-6)


def test_cosine_golden_values() -> None:
    teacher = logits(2, 3, 4, seed=1)
    loss = HiddenStateLoss("cosine")
    assert loss(3.0 * teacher, teacher, MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(-teacher, teacher, MASK).item() == pytest.approx(2.0, rel=1e-6)
    # one valid position each at cosine 1 and cosine 0: mean of 1 - cos = (0 + 1) / 2
    student = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])
    assert loss(student, torch.tensor([[[2.0, 0.0], [1.0, 0.0]]]), torch.ones(1, 2)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_masked_positions_get_no_gradient(kind: str) -> None:
    student = logits(2, 3, 4, seed=2).requires_grad_()
    HiddenStateLoss(kind)(student, logits(2, 3, 4, seed=3), MASK).backward()
    assert torch.equal(student.grad[~MASK], torch.zeros(2, 4))
    assert (student.grad[MASK].abs().sum(dim=-1) > 0).all()


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_all_masked_batch_gives_zero_in_the_graph(kind: str) -> None:
    student = logits(2, 3, 4, seed=4).requires_grad_()
    loss = HiddenStateLoss(kind)
    grad = contract.assert_zero_with_finite_gradients(
        lambda s, t: loss([s, s], [t, t], torch.zeros(2, 3, dtype=torch.bool)), student, logits(2, 3, 4, seed=5)
    )
    assert torch.equal(grad, torch.zeros_like(grad))


def test_pairs_are_averaged_so_the_weight_does_not_grow_with_the_number_of_layers() -> None:
    teacher = logits(2, 3, 4, seed=6)
    student = teacher + 1.0
    loss = HiddenStateLoss()
    assert loss([student] * 4, [teacher] * 4, MASK).item() == pytest.approx(1.0, rel=1e-6)
    assert loss([student, teacher], [teacher, teacher], MASK).item() == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("mask", [MASK.long(), MASK.float()])
def test_integer_and_float_zero_one_masks_equal_the_bool_mask(mask: torch.Tensor) -> None:
    student, teacher = logits(2, 3, 4, seed=7), logits(2, 3, 4, seed=8)
    loss = HiddenStateLoss()
    assert torch.equal(loss(student, teacher, mask), loss(student, teacher, MASK))


def test_bad_masks_raise_value_error() -> None:
    student, teacher = logits(2, 3, 4, seed=9), logits(2, 3, 4, seed=10)
    with pytest.raises(ValueError, match=r"mask \(3, 2\) does not match the \(B, T\) \(2, 3\)"):
        HiddenStateLoss()(student, teacher, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        HiddenStateLoss()(student, teacher, torch.full((2, 3), 0.5))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"), [((2, 3, 4), (2, 3, 5)), ((2, 3, 4), (2, 4, 4)), ((6, 4), (6, 4))]
)
def test_states_must_be_b_t_d_of_one_shape(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        HiddenStateLoss()(torch.zeros(student_shape), torch.zeros(teacher_shape), torch.ones(2, 3))


@pytest.mark.parametrize("kind", ["MSE", "cos", "kl", None])
def test_unknown_kind_raises_value_error_naming_it(kind: object) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        HiddenStateLoss(kind)


def test_constructor_is_annotated_defaulted_and_documented() -> None:
    (param,) = contract.assert_constructor_annotated_and_documented(HiddenStateLoss, ["kind"])
    assert param.default == "mse"
