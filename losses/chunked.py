"""Masked, chunked per-token losses with the gradient computed in the forward pass (written once).

A per-token loss over a vocabulary (`RowLoss`: student rows and the chunk's targets -> per-row loss and its
closed-form gradient w.r.t. the student rows) is run here over the positions whose label is not `ignore_index`, a
chunk of tokens at a time. Each chunk's rows are gathered, cast to the compute dtype, and dropped before the next
chunk, so the full fp32 `(N, V)` softmax is never held at once, and autograd keeps no chunk's intermediates: a custom
`torch.autograd.Function` writes each chunk's gradient into one preallocated tensor during the forward pass, and its
backward only scales that tensor by the upstream gradient, in place.

The two sides come from sources:

- the student: its logits (`ChunkedRowLoss`; peak memory = the logits + their gradient + one chunk), or its final
  hidden states and LM head (`FusedLinearRowLoss`): each chunk's logits are `h @ W^T + b`, so the student's full
  logits never exist, and the gradients w.r.t. the hidden states, the weight and the bias are accumulated chunk by
  chunk;
- the teacher (`TeacherSource`): its logits (`TeacherLogits`), its hidden states and LM head (`TeacherHead`, each
  chunk's logits computed under no_grad), or its stored top-k log-probabilities (`TeacherTopK`, an offline cache).

Both return the SUM of the per-token losses over the valid tokens and the number of valid tokens, so that a caller
can normalize by the tokens of a whole batch (or of several micro-batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from losses._common import compute_dtype
from losses.teacher_rows import TeacherHead, TeacherLogits, TeacherSource, TeacherTopK, TopKRows, as_teacher, check_head

# the teacher sources are defined in `losses.teacher_rows` and exported here too, beside the functions that take
# them, as the docs import them: `from losses.chunked import TeacherHead`
__all__ = [
    "ChunkTargets",
    "ChunkedRowLoss",
    "FusedLinearRowLoss",
    "RowLoss",
    "TeacherHead",
    "TeacherLogits",
    "TeacherSource",
    "TeacherTopK",
    "TopKRows",
    "chunk_sums",
    "cross_entropy_rows",
    "fused_masked_sum_and_count",
    "head_rows_map",
    "log_softmax_",
    "masked_sum_and_count",
    "rows_per_chunk",
    "valid_positions",
    "weighted_row_loss",
]


@dataclass
class ChunkTargets:
    """What a `RowLoss` compares a chunk of student rows with: the labels `(c,)` and the teacher's rows, `(c, V')`
    logits or `TopKRows` (None when the loss needs no teacher)."""

    labels: torch.Tensor
    teacher: torch.Tensor | TopKRows | None

    def copy(self) -> ChunkTargets:
        """A copy whose teacher rows a RowLoss may overwrite (the labels are only read)."""
        teacher = self.teacher
        if isinstance(teacher, torch.Tensor):
            teacher = teacher.clone()
        elif isinstance(teacher, TopKRows):
            teacher = replace(teacher, logprobs=teacher.logprobs.clone(), tail=teacher.tail.clone())
        return ChunkTargets(self.labels, teacher)


# (student_rows (c, V) compute dtype, targets, need_grad) ->
#   (per-row loss (c,), gradient of the summed loss w.r.t. the student rows (c, V0 <= V) or None).
# A gradient narrower than the student rows covers their leading columns; the other columns get no gradient.
# The student rows and the teacher rows are the chunk's own fresh copies: a RowLoss may overwrite them and return a
# gradient that reuses their storage (so a chunk's temporaries stay a few (c, V) tensors).
RowLoss = Callable[[torch.Tensor, ChunkTargets, bool], tuple[torch.Tensor, torch.Tensor | None]]


# -- the chunk loop ---------------------------------------------------------------------------------------------------

CHUNK_ELEMENTS = 2**23  # one chunk's (c, V) rows: 32 MiB in fp32; a chunk's temporaries are about ten such tensors


def rows_per_chunk(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one chunk's `(c, V)` rows hold about `elements` numbers (at least 8 tokens): the
    memory of a chunk depends on tokens x vocabulary, so a fixed token count that suits 32k entries takes 4x the
    memory at 128k."""
    return max(8, elements // max(vocab_size, 1))


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


def _targets(labels: torch.Tensor, teacher: TeacherSource | None, index: tuple, dtype: torch.dtype) -> ChunkTargets:
    return ChunkTargets(labels[index].long(), None if teacher is None else teacher.rows(index, dtype))


def _store(out: torch.Tensor, index: tuple[torch.Tensor, ...], rows: torch.Tensor) -> None:
    """`out[index, :rows.shape[-1]] = rows` (the leading columns of the gathered rows), cast to `out`'s dtype."""
    out[(*index, slice(0, rows.shape[-1]))] = rows.to(out.dtype)


def _check_labels(leading: torch.Size, teacher: TeacherSource | None, labels: torch.Tensor, what: str) -> None:
    if teacher is not None and teacher.leading_shape != leading:
        raise ValueError(f"{teacher.describes} {tuple(teacher.leading_shape)} do not match the {what} {tuple(leading)}")
    if labels.shape != leading:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the {what} {tuple(leading)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer token ids, got {labels.dtype}")


def _loss_and_logit_grad(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher: TeacherSource | None,
    labels: torch.Tensor,
    positions: torch.Tensor,
    chunk_size: int | None,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk loop: summed loss (compute dtype) and its gradient w.r.t. `student_logits` (their shape and dtype)."""
    dtype = compute_dtype(student_logits)
    total = torch.zeros((), dtype=dtype, device=student_logits.device)
    grad = torch.zeros_like(student_logits, memory_format=torch.contiguous_format) if need_grad else None
    for index in _chunks(positions, chunk_size):
        total += _logit_chunk(row_loss, student_logits, teacher, labels, index, dtype, grad)
    return total, grad


def _logit_chunk(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher: TeacherSource | None,
    labels: torch.Tensor,
    index: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    grad: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk: its summed loss; its gradient rows written into `grad`. A function of its own so that the chunk's
    tensors are freed on return, before the next chunk allocates (a loop body would keep them until rebound)."""
    student_rows = student_logits[index].to(dtype)  # (c, V); a copy (advanced indexing)
    per_row, row_grad = row_loss(student_rows, _targets(labels, teacher, index, dtype), grad is not None)
    if grad is not None:
        _store(grad, index, row_grad)
    return per_row.sum()


class ChunkedRowLoss(torch.autograd.Function):
    """Summed masked row loss over student logits, gradient computed chunk by chunk in the forward pass.

    `apply(student_logits (..., V), teacher source or None, labels, positions (N, k), row_loss, chunk_size)` ->
    scalar sum. The teacher gets no gradient. The saved gradient is scaled in place by the upstream gradient and
    handed over (no second full-size tensor); a second backward through a retained graph (`gradcheck`,
    `retain_graph=True`) recomputes it from the saved inputs.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        student_logits: torch.Tensor,
        teacher: TeacherSource | None,
        labels: torch.Tensor,
        positions: torch.Tensor,
        row_loss: RowLoss,
        chunk_size: int | None,
    ) -> torch.Tensor:
        total, grad = _loss_and_logit_grad(row_loss, student_logits, teacher, labels, positions, chunk_size, True)
        ctx.save_for_backward(student_logits, labels, positions)
        ctx.teacher, ctx.row_loss, ctx.chunk_size, ctx.grad = teacher, row_loss, chunk_size, grad
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        grad, ctx.grad = ctx.grad, None  # hand the tensor over: it may become `.grad` and be changed from then on
        if grad is None:  # a second backward through the same graph: recompute
            student_logits, labels, positions = ctx.saved_tensors
            _, grad = _loss_and_logit_grad(
                ctx.row_loss, student_logits, ctx.teacher, labels, positions, ctx.chunk_size, True
            )
        return grad.mul_(grad_output.to(grad.dtype)), None, None, None, None, None


def masked_sum_and_count(
    row_loss: RowLoss,
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherSource | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, int]:
    """Sum of `row_loss` over the positions where `labels != ignore_index`, and their number.

    Args:
        row_loss: the per-token loss with its closed-form gradient (`RowLoss`).
        student_logits: (..., V), any float dtype; the gradient comes back in this dtype.
        teacher: (..., V') logits (detached here), a `TeacherSource`, or None for a loss of the labels only.
        labels: (...) integer ids, the leading shape of the logits.
        ignore_index: label of the positions that are left out.
        chunk_size: tokens per chunk; None = all valid tokens in one chunk.

    Returns:
        The sum (a scalar in the compute dtype: fp32, or fp64 for fp64 input) and the count (a Python int). With no
        valid token the sum is 0 and, when the student requires grad, its gradient is 0.
    """
    if student_logits.dim() < 2:
        shape = tuple(student_logits.shape)
        raise ValueError(f"student logits must have a trailing vocabulary dim, like (B, T, V); got {shape}")
    source = None if teacher is None else as_teacher(teacher)
    _check_labels(student_logits.shape[:-1], source, labels, "student logits")
    positions = valid_positions(labels, ignore_index)  # (N, k)
    if torch.is_grad_enabled() and student_logits.requires_grad:
        total = ChunkedRowLoss.apply(student_logits, source, labels, positions, row_loss, chunk_size)
    else:
        total, _ = _loss_and_logit_grad(row_loss, student_logits, source, labels, positions, chunk_size, False)
    return total, positions.shape[0]


def _fused_loss_and_grads(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: TeacherSource | None,
    labels: torch.Tensor,
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
        total += _fused_chunk(row_loss, hidden, weight, bias, teacher, labels, index, dtype, grads)
    cast = [None if g is None else g.to(w.dtype) for g, w in ((grad_weight, weight), (grad_bias, bias))]
    return total, grad_hidden, cast[0], cast[1]


def _fused_chunk(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: TeacherSource | None,
    labels: torch.Tensor,
    index: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> torch.Tensor:
    """One chunk of the fused head: its summed loss; gradients accumulated into `grads` (hidden, weight, bias)."""
    grad_hidden, grad_weight, grad_bias = grads
    need_grad = any(g is not None for g in grads)
    h = hidden[index].to(weight.dtype)  # (c, H)
    student_rows = F.linear(h, weight, bias).to(dtype)  # (c, V)
    per_row, row_grad = row_loss(student_rows, _targets(labels, teacher, index, dtype), need_grad)  # (c,), (c, V0)
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

    `apply(hidden (..., H), weight (V, H), bias (V,) or None, teacher source or None, labels, positions, row_loss,
    chunk_size)` -> scalar sum. Gradients w.r.t. hidden, weight and bias are computed in the forward pass and scaled
    in backward, as in `ChunkedRowLoss`.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        teacher: TeacherSource | None,
        labels: torch.Tensor,
        positions: torch.Tensor,
        row_loss: RowLoss,
        chunk_size: int | None,
    ) -> torch.Tensor:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, *grads = _fused_loss_and_grads(
            row_loss, hidden, weight, bias, teacher, labels, positions, chunk_size, needs
        )
        ctx.save_for_backward(hidden, weight, bias, labels, positions)
        ctx.teacher, ctx.row_loss, ctx.chunk_size, ctx.needs, ctx.grads = teacher, row_loss, chunk_size, needs, grads
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor) -> tuple:
        grads, ctx.grads = ctx.grads, None
        if grads is None:  # a second backward through the same graph: recompute
            hidden, weight, bias, labels, positions = ctx.saved_tensors
            _, *grads = _fused_loss_and_grads(
                ctx.row_loss, hidden, weight, bias, ctx.teacher, labels, positions, ctx.chunk_size, ctx.needs
            )
        scaled = [None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads]
        return (*scaled, None, None, None, None, None)


def fused_masked_sum_and_count(
    row_loss: RowLoss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: torch.Tensor | TeacherSource | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, int]:
    """`masked_sum_and_count` on the logits `hidden @ weight^T + bias` without materializing them.

    Args:
        row_loss: the per-token loss with its closed-form gradient (`RowLoss`).
        hidden: (..., H) final hidden states of the student.
        weight: (V, H) the student's LM-head weight; bias: (V,) or None.
        teacher: (..., V') logits (detached here), a `TeacherSource` (e.g. `TeacherHead`), or None.
        labels: (...) integer ids, the leading shape of `hidden`.
        ignore_index: label of the positions that are left out.
        chunk_size: tokens per chunk; None = all valid tokens in one chunk.

    Returns:
        The sum (compute dtype of the weight) and the number of valid tokens.
    """
    check_head(hidden, weight, bias, "student")
    source = None if teacher is None else as_teacher(teacher)
    _check_labels(hidden.shape[:-1], source, labels, "hidden states")
    positions = valid_positions(labels, ignore_index)
    tensors = [t for t in (hidden, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        total = FusedLinearRowLoss.apply(hidden, weight, bias, source, labels, positions, row_loss, chunk_size)
    else:
        args = (row_loss, hidden, weight, bias, source, labels, positions, chunk_size, (False, False, False))
        total = _fused_loss_and_grads(*args)[0]
    return total, positions.shape[0]


# -- row losses and combinations --------------------------------------------------------------------------------------


def log_softmax_(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`log_softmax(logits / T)` over the last dim, in place, with one (c, V) temporary (`torch.logsumexp` has two)."""
    if temperature != 1.0:
        logits.div_(temperature)
    logits.sub_(logits.amax(dim=-1, keepdim=True))
    return logits.sub_(logits.exp().sum(dim=-1, keepdim=True).log_())


def cross_entropy_rows(
    student_rows: torch.Tensor, targets: ChunkTargets, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token cross-entropy `-log softmax(s)[label]` per row, and its gradient `softmax(s) - onehot(label)` (a
    `RowLoss` that reads the labels only)."""
    log_p = log_softmax_(student_rows)  # (c, V), in place
    labels = targets.labels[:, None]  # (c, 1)
    nll = -log_p.gather(1, labels).squeeze(1)
    if not need_grad:
        return nll, None
    return nll, log_p.exp_().scatter_add_(1, labels, torch.full_like(labels, -1, dtype=log_p.dtype))


def weighted_row_loss(parts: Sequence[tuple[str, float, RowLoss]], sums: dict[str, list[torch.Tensor]]) -> RowLoss:
    """One RowLoss `sum_i weight_i * loss_i`, so several losses share each chunk's student logits (computed once).

    Each part gets its own copy of the chunk's rows (row losses overwrite them); the summed unweighted value of each
    part over each chunk is appended to `sums[name]` (detached), for logging.
    """

    def row_loss(
        student_rows: torch.Tensor, targets: ChunkTargets, need_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        total = student_rows.new_zeros(student_rows.shape[0])
        grad = torch.zeros_like(student_rows) if need_grad else None
        for position, (name, weight, loss) in enumerate(parts):
            last = position == len(parts) - 1
            rows, chunk_targets = (student_rows, targets) if last else (student_rows.clone(), targets.copy())
            value, part_grad = loss(rows, chunk_targets, need_grad)
            sums.setdefault(name, []).append(value.detach().sum())
            total += weight * value
            if grad is not None and part_grad is not None:
                grad[:, : part_grad.shape[-1]].add_(part_grad, alpha=weight)
        return total, grad

    return row_loss


def chunk_sums(
    stats: Callable[[torch.Tensor, ChunkTargets], dict[str, torch.Tensor]],
    student: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    teacher: torch.Tensor | TeacherSource | None,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Sums over the valid positions of per-chunk statistics, without gradient (evaluation).

    `student` is its logits `(..., V)` or `(hidden (..., H), weight (V, H), bias or None)` (each chunk's logits are
    computed from the head). `stats(student_rows, targets)` returns named sums for one chunk; the student rows are
    the chunk's own copy (it may overwrite them). Returns the totals and the number of valid positions.
    """
    source = None if teacher is None else as_teacher(teacher)
    head = isinstance(student, tuple)
    leading = student[0].shape[:-1] if head else student.shape[:-1]
    _check_labels(leading, source, labels, "student")
    positions = valid_positions(labels, ignore_index)
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for index in _chunks(positions, chunk_size):
            if head:
                hidden, weight, bias = student
                rows = F.linear(hidden[index].to(weight.dtype), weight, bias)
            else:
                rows = student[index]
            dtype = compute_dtype(rows)
            for name, value in stats(rows.to(dtype), _targets(labels, source, index, dtype)).items():
                totals[name] = totals[name] + value if name in totals else value
    return totals, positions.shape[0]


def head_rows_map(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, ...]:
    """`fn(hidden @ weight^T + bias)` for every row of `hidden (..., H)`, a chunk of rows at a time.

    `fn` maps (c, V) logits to a tuple of (c, ...) tensors (e.g. the top-k values of each row). Under autograd each
    chunk is checkpointed: its logits are freed after `fn` and recomputed in backward, so the full logits never
    exist at once, and gradients reach `hidden`, `weight` and `bias` through `fn`'s outputs. Returns each output
    with the leading shape of `hidden`.
    """
    check_head(hidden, weight, bias, "student")
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, H)

    def chunk(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return fn(F.linear(h.to(w.dtype), w, b))

    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        h = flat[start : start + chunk_size]
        pieces.append(checkpoint(chunk, h, weight, bias, use_reentrant=False) if grad else chunk(h, weight, bias))
    if not pieces:  # no rows: run fn on an empty chunk for the output shapes
        pieces.append(chunk(flat, weight, bias))
    return tuple(
        torch.cat(parts).reshape(*hidden.shape[:-1], *parts[0].shape[1:]) for parts in zip(*pieces, strict=True)
    )
