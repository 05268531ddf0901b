"""Masked, chunked per-token losses with the gradient computed in the forward pass (written once).

A per-token loss over a vocabulary (`RowLoss`: student rows, teacher rows -> per-row loss and its closed-form
gradient w.r.t. the student rows) is run here over the positions whose label is not `ignore_index`, a chunk of tokens
at a time. Each chunk's rows are gathered, cast to the compute dtype, and dropped before the next chunk, so the full
fp32 `(N, V)` softmax is never held at once, and autograd keeps no chunk's intermediates: a custom
`torch.autograd.Function` writes each chunk's gradient into one preallocated tensor (in the student's dtype) during
the forward pass, and its backward only scales that tensor by the upstream gradient, in place. Peak memory is then the
student logits + their gradient + one chunk's temporaries (`ChunkedRowLoss`).

`FusedLinearRowLoss` goes one step further for a language model's head: it computes each chunk's student logits from
the hidden states (`h @ W^T + b`), so the student's full logits never exist, and accumulates the gradients w.r.t. the
hidden states, the weight and the bias chunk by chunk.

Both return the SUM of the per-token losses over the valid tokens; `masked_sum_and_count` /
`fused_masked_sum_and_count` also return the number of valid tokens, so that a caller can normalize by the tokens of a
whole batch (or of several micro-batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from losses._common import compute_dtype

__all__ = [
    "ChunkedRowLoss",
    "FusedLinearRowLoss",
    "RowLoss",
    "fused_masked_sum_and_count",
    "masked_sum_and_count",
    "valid_positions",
]

# (student_rows (c, V) compute dtype, teacher_rows (c, V') compute dtype, need_grad) ->
#   (per-row loss (c,), gradient of the summed loss w.r.t. the student rows (c, V0 <= V) or None).
# A gradient narrower than the student rows covers their leading columns; the other columns get no gradient.
# Both row tensors are the chunk's own fresh copies: a RowLoss may overwrite them and return a gradient that reuses
# their storage (so a chunk's temporaries stay a few (c, V) tensors).
RowLoss = Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]]


def valid_positions(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The positions to distil: `(N, labels.dim())` indices of the entries of `labels` that are not `ignore_index`.

    One host-device sync (the number of valid tokens decides the chunk loop).
    """
    return (labels != ignore_index).nonzero()


def _chunks(positions: torch.Tensor, chunk_size: int | None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Index tuples (one tensor per leading dim) of consecutive chunks of `positions`; `None` = one chunk."""
    total = positions.shape[0]
    step = total if chunk_size is None else chunk_size
    for start in range(0, total, max(step, 1)):
        yield tuple(positions[start : start + step].unbind(1))


def _store(out: torch.Tensor, index: tuple[torch.Tensor, ...], rows: torch.Tensor) -> None:
    """`out[index, :rows.shape[-1]] = rows` (the leading columns of the gathered rows), cast to `out`'s dtype."""
    out[(*index, slice(0, rows.shape[-1]))] = rows.to(out.dtype)


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if student.dim() < 2:
        raise ValueError(f"{what} must have a trailing vocabulary dim, like (B, T, V); got {tuple(student.shape)}")
    if teacher.shape[:-1] != student.shape[:-1]:
        raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the {what} {tuple(student.shape)}")
    if labels.shape != student.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the {what} {tuple(student.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got {labels.dtype}")


def _loss_and_logit_grad(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    positions: torch.Tensor,
    chunk_size: int | None,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk loop: summed loss (compute dtype) and its gradient w.r.t. `student_logits` (their shape and dtype)."""
    dtype = compute_dtype(student_logits)
    total = torch.zeros((), dtype=dtype, device=student_logits.device)
    grad = torch.zeros_like(student_logits, memory_format=torch.contiguous_format) if need_grad else None
    for index in _chunks(positions, chunk_size):
        total += _logit_chunk(row_loss, student_logits, teacher_logits, index, dtype, grad)
    return total, grad


def _logit_chunk(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    index: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    grad: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk: its summed loss; its gradient rows written into `grad`. A function of its own so that the chunk's
    tensors are freed on return, before the next chunk allocates (a loop body would keep them until rebound)."""
    student_rows = student_logits[index].to(dtype)  # (c, V)
    teacher_rows = teacher_logits[index].to(dtype)  # (c, V')
    per_row, row_grad = row_loss(student_rows, teacher_rows, grad is not None)
    if grad is not None:
        _store(grad, index, row_grad)
    return per_row.sum()


class ChunkedRowLoss(torch.autograd.Function):
    """Summed masked row loss over student logits, gradient computed chunk by chunk in the forward pass.

    `apply(student_logits (..., V), teacher_logits (..., V'), positions (N, k), row_loss, chunk_size)` -> scalar
    sum. The teacher gets no gradient. The saved gradient is scaled in place by the upstream gradient and handed over
    (no second full-size tensor); a second backward through a retained graph (`gradcheck`, `retain_graph=True`)
    recomputes it from the saved inputs.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        positions: torch.Tensor,
        row_loss: RowLoss,
        chunk_size: int | None,
    ) -> torch.Tensor:
        total, grad = _loss_and_logit_grad(row_loss, student_logits, teacher_logits, positions, chunk_size, True)
        ctx.save_for_backward(student_logits, teacher_logits, positions)
        ctx.row_loss, ctx.chunk_size, ctx.grad = row_loss, chunk_size, grad
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        grad, ctx.grad = ctx.grad, None  # hand the tensor over: it may become `.grad` and be changed from then on
        if grad is None:  # a second backward through the same graph: recompute
            student_logits, teacher_logits, positions = ctx.saved_tensors
            _, grad = _loss_and_logit_grad(
                ctx.row_loss, student_logits, teacher_logits, positions, ctx.chunk_size, True
            )
        return grad.mul_(grad_output.to(grad.dtype)), None, None, None, None


def masked_sum_and_count(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, int]:
    """Sum of `row_loss` over the positions where `labels != ignore_index`, and their number.

    Args:
        row_loss: the per-token loss with its closed-form gradient (`RowLoss`).
        student_logits: (..., V), any float dtype; the gradient comes back in this dtype.
        teacher_logits: (..., V'), detached here.
        labels: (...) integer ids, the leading shape of the logits.
        ignore_index: label of the positions that are left out.
        chunk_size: tokens per chunk; None = all valid tokens in one chunk.

    Returns:
        The sum (a scalar in the compute dtype: fp32, or fp64 for fp64 input) and the count (a Python int). With no
        valid token the sum is 0 and, when the student requires grad, its gradient is 0.
    """
    _check_shapes(student_logits, teacher_logits, labels, "student logits")
    positions = valid_positions(labels, ignore_index)  # (N, k)
    teacher_logits = teacher_logits.detach()
    if torch.is_grad_enabled() and student_logits.requires_grad:
        total = ChunkedRowLoss.apply(student_logits, teacher_logits, positions, row_loss, chunk_size)
    else:
        total, _ = _loss_and_logit_grad(row_loss, student_logits, teacher_logits, positions, chunk_size, False)
    return total, positions.shape[0]


def _fused_loss_and_grads(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    positions: torch.Tensor,
    chunk_size: int | None,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The fused chunk loop: summed loss and the gradients w.r.t. hidden, weight and bias (None where not needed).

    Each chunk's logits are `F.linear` in the weight's dtype (as the model's head computes them), then cast to the
    compute dtype. The weight and bias gradients are accumulated in the compute dtype across chunks and cast at the end.
    """
    dtype = compute_dtype(weight)
    total = torch.zeros((), dtype=dtype, device=weight.device)
    need_hidden, need_weight, need_bias = needs
    grad_hidden = torch.zeros_like(hidden, memory_format=torch.contiguous_format) if need_hidden else None
    grad_weight = torch.zeros_like(weight, dtype=dtype) if need_weight else None
    grad_bias = torch.zeros_like(bias, dtype=dtype) if need_bias and bias is not None else None
    grads = (grad_hidden, grad_weight, grad_bias)
    for index in _chunks(positions, chunk_size):
        total += _fused_chunk(row_loss, hidden, weight, bias, teacher_logits, index, dtype, grads)
    cast = [None if g is None else g.to(w.dtype) for g, w in ((grad_weight, weight), (grad_bias, bias))]
    return total, grad_hidden, cast[0], cast[1]


def _fused_chunk(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    index: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> torch.Tensor:
    """One chunk of the fused head: its summed loss; gradients accumulated into `grads` (hidden, weight, bias)."""
    grad_hidden, grad_weight, grad_bias = grads
    need_grad = any(g is not None for g in grads)
    h = hidden[index].to(weight.dtype)  # (c, H)
    student_rows = F.linear(h, weight, bias).to(dtype)  # (c, V)
    per_row, row_grad = row_loss(student_rows, teacher_logits[index].to(dtype), need_grad)  # (c,), (c, V0)
    if need_grad:
        d = row_grad.to(weight.dtype)  # (c, V0)
        width = d.shape[-1]
        if grad_hidden is not None:
            _store(grad_hidden, index, d @ weight[:width])  # (c, H)
        if grad_weight is not None and grad_weight.dtype == d.dtype:
            grad_weight[:width].addmm_(d.T, h)  # (V0, H), no temporary
        elif grad_weight is not None:
            grad_weight[:width] += (d.T @ h).to(dtype)  # lower-precision head: accumulate in the compute dtype
        if grad_bias is not None:
            grad_bias[:width] += row_grad.sum(0)
    return per_row.sum()


class FusedLinearRowLoss(torch.autograd.Function):
    """Summed masked row loss on the logits `hidden @ weight^T + bias`, computed chunk by chunk, never all at once.

    `apply(hidden (..., H), weight (V, H), bias (V,) or None, teacher_logits (..., V'), positions, row_loss,
    chunk_size)` -> scalar sum. Gradients w.r.t. hidden, weight and bias are computed in the forward pass and scaled
    in backward, as in `ChunkedRowLoss`.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        teacher_logits: torch.Tensor,
        positions: torch.Tensor,
        row_loss: RowLoss,
        chunk_size: int | None,
    ) -> torch.Tensor:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, *grads = _fused_loss_and_grads(
            row_loss, hidden, weight, bias, teacher_logits, positions, chunk_size, needs
        )
        ctx.save_for_backward(hidden, weight, bias, teacher_logits, positions)
        ctx.row_loss, ctx.chunk_size, ctx.needs, ctx.grads = row_loss, chunk_size, needs, grads
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward through the same graph: recompute
            hidden, weight, bias, teacher_logits, positions = ctx.saved_tensors
            _, *grads = _fused_loss_and_grads(
                ctx.row_loss, hidden, weight, bias, teacher_logits, positions, ctx.chunk_size, ctx.needs
            )
        scaled = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return (*scaled, None, None, None, None)


def fused_masked_sum_and_count(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, int]:
    """`masked_sum_and_count` on the logits `hidden @ weight^T + bias` without materializing them.

    Args:
        row_loss: the per-token loss with its closed-form gradient (`RowLoss`).
        hidden: (..., H) final hidden states of the student.
        weight: (V, H) the student's LM-head weight; bias: (V,) or None.
        teacher_logits: (..., V'), detached here.
        labels: (...) integer ids, the leading shape of `hidden`.
        ignore_index: label of the positions that are left out.
        chunk_size: tokens per chunk; None = all valid tokens in one chunk.

    Returns:
        The sum (compute dtype of the weight) and the number of valid tokens.
    """
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"lm_head_weight {tuple(weight.shape)} must be (V, H) with H = hidden {tuple(hidden.shape)}[-1]"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"lm_head_bias {tuple(bias.shape)} must be (V,) = ({weight.shape[0]},)")
    _check_shapes(hidden, teacher_logits, labels, "hidden states")
    positions = valid_positions(labels, ignore_index)
    teacher_logits = teacher_logits.detach()
    tensors = [t for t in (hidden, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        total = FusedLinearRowLoss.apply(hidden, weight, bias, teacher_logits, positions, row_loss, chunk_size)
    else:
        args = (row_loss, hidden, weight, bias, teacher_logits, positions, chunk_size, (False, False, False))
        total = _fused_loss_and_grads(*args)[0]
    return total, positions.shape[0]
