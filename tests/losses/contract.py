"""The contract every loss meets (the loss contract, docs/design.md), as checks that each loss's test file calls.

Each check takes the loss as a closure ``loss(student, teacher) -> scalar`` so that a loss with a target, an epoch or
a switch binds those first; the checks build their own inputs from ``seed`` where the inputs are not the point of the
test. Method-specific tests (golden values, invariances, references written from the formula) stay in the test files.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
UPSTREAM = 0.37  # a non-unit upstream gradient, as when the term is weighted


def logits(*shape: int, seed: int, scale: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded Gaussian logits of the given shape, times ``scale``, drawn in float64 and then cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).to(dtype)


def labels(batch: int, classes: int, seed: int) -> torch.Tensor:
    """Seeded class indices in ``[0, classes)``, shape ``(batch,)``."""
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))


def assert_matches_reference_in_value_and_gradient(
    loss: LossFn, reference: LossFn, seed: int, batch: int = 5, classes: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss equals the float64 reference in value and in the student's gradient, with ``UPSTREAM`` backpropagated.

    Float64 (batch, classes) logits: student from ``seed``, teacher from ``seed + 1``. Returns them; the student's
    ``.grad`` (of ``UPSTREAM * loss``) is left set for further checks by the caller.
    """
    student = logits(batch, classes, seed=seed, dtype=torch.float64).requires_grad_()
    teacher = logits(batch, classes, seed=seed + 1, dtype=torch.float64)
    ref_student = student.detach().clone().requires_grad_()

    value = loss(student, teacher)
    expected = reference(ref_student, teacher)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)

    (UPSTREAM * value).backward()
    (UPSTREAM * expected).backward()
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-9, atol=1e-12)
    return student, teacher


def assert_gradcheck_wrt_student(loss: LossFn, seed: int) -> None:
    """``torch.autograd.gradcheck`` in float64 on (3, 6) logits; student from ``seed``, teacher from ``seed + 1``."""
    student = logits(3, 6, seed=seed, dtype=torch.float64).requires_grad_()
    teacher = logits(3, 6, seed=seed + 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), (student,))


def assert_zero_with_finite_gradients(
    loss: LossFn, student: torch.Tensor | None = None, teacher: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss is exactly 0 and the student gets a finite gradient of its own shape; returns that gradient.

    Without inputs the batch is empty: (0, 5) student and teacher logits, the all-masked case of the loss contract.
    """
    student = torch.zeros(0, 5, requires_grad=True) if student is None else student
    teacher = torch.zeros(0, 5) if teacher is None else teacher
    value = loss(student, teacher)
    assert value.item() == 0.0
    value.backward()
    assert student.grad is not None
    assert student.grad.shape == student.shape
    assert torch.isfinite(student.grad).all()
    return student.grad


def assert_no_gradient_reaches_the_teacher(loss: LossFn, seed: int) -> None:
    """No gradient reaches a (3, 5) teacher, whether it is the output of a layer or a leaf that requires grad.

    Seeds: the layer's input from ``seed``, the teacher leaf from ``seed + 1``, the student from ``seed + 2``; the
    student must still get a non-zero gradient.
    """
    teacher_layer = torch.nn.Linear(4, 5)
    features = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    teacher = teacher_layer(features)  # a teacher output that is part of a graph
    teacher_leaf = logits(3, 5, seed=seed + 1).requires_grad_()
    student = logits(3, 5, seed=seed + 2).requires_grad_()

    (loss(student, teacher) + loss(student, teacher_leaf)).backward()

    assert teacher_leaf.grad is None
    assert teacher_layer.weight.grad is None
    assert teacher_layer.bias.grad is None
    assert student.grad is not None
    assert student.grad.abs().sum() > 0


def assert_bf16_inputs_give_fp32_result(loss: LossFn, reference: LossFn, seed: int) -> None:
    """bf16 (16, 100) logits give an fp32 loss equal to the fp32 loss of the rounded values and to a float64 reference.

    Student from ``seed``, teacher from ``seed + 1`` (scale 5); ``reference`` gets the detached bf16 tensors. The
    student's gradient stays bf16 and finite.
    """
    student = logits(16, 100, seed=seed, scale=5.0, dtype=torch.bfloat16).requires_grad_()
    teacher = logits(16, 100, seed=seed + 1, scale=5.0, dtype=torch.bfloat16)
    value = loss(student, teacher)

    assert value.dtype == torch.float32
    fp32 = loss(student.detach().float(), teacher.float())
    torch.testing.assert_close(value, fp32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(value.double(), reference(student.detach(), teacher), rtol=1e-5, atol=1e-6)
    value.backward()
    assert student.grad.dtype == torch.bfloat16
    assert torch.isfinite(student.grad.float()).all()


def assert_constructor_annotated_and_documented(cls: type, names: list[str]) -> list[inspect.Parameter]:
    """The constructor takes exactly ``names``, each annotated, with a default, and under ``Args:`` in the docstring.

    Returns the parameters for checks of the default values.
    """
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params] == names
    args_doc = cls.__doc__.split("Args:")[1]
    for p in params:
        assert p.default is not p.empty and p.annotation is not p.empty
        assert f"{p.name}:" in args_doc
    return params
