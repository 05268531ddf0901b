"""Token-level divergences between a teacher and a student language model; docs/methods.md, section 5.

Forward KL, reverse KL, generalized JSD(beta) and total variation distance per token over the vocabulary, masked to
the positions being distilled and normalized by the number of valid tokens. Masking, normalization and chunking live
in `losses.chunked`; each divergence here is its value and its closed-form gradient w.r.t. the student logits.

Gradients, with `a = s / T`, `p_s = softmax(a)`, `p_t = softmax(t / T)`, and for any loss `f(p_s)` with
`g = df/dp_s`: `df/da = p_s * (g - <p_s, g>)`, `df/ds = df/da / T`.

- forward KL `sum p_t (log p_t - log p_s)`: `df/da = p_s - p_t`.
- reverse KL `sum p_s (log p_s - log p_t)`: `g = log p_s - log p_t + 1`, so `df/da = p_s * (log p_s - log p_t - KL)`.
- JSD(beta) `beta KL(p_t || m) + (1 - beta) KL(p_s || m)`, `m = beta p_t + (1 - beta) p_s`: rewritten as
  `beta <p_t, log p_t> + (1 - beta) <p_s, log p_s> - <m, log m>` (the two `<., log m>` terms add up to `<m, log m>`),
  `g = (1 - beta) (log p_s + 1) - (1 - beta) (log m + 1) = (1 - beta) (log p_s - log m)`, so
  `df/da = (1 - beta) p_s * (log p_s - log m - KL(p_s || m))`.
- TVD `1/2 sum |p_t - p_s|`: subgradient `g = 1/2 sign(p_s - p_t)` (sign(0) = 0, as `torch.abs`'s backward), so
  `df/da = p_s * (g - <p_s, g>)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal, get_args

import torch
from torch import nn

from losses._common import check_int
from losses.chunked import ChunkTargets, fused_masked_sum_and_count, log_softmax_, masked_sum_and_count
from losses.consumes import TOKEN_LOGITS, Consumes
from losses.teacher_rows import TeacherSource, TeacherTopK, TopKRows, as_teacher

__all__ = [
    "DIVERGENCES",
    "PAD_MASS_TOLERANCE",
    "DivergenceName",
    "TokenDivergenceLoss",
    "token_divergence_rows",
    "topk_divergence_rows",
]

DivergenceName = Literal["forward_kl", "reverse_kl", "jsd", "tvd"]

# The padded columns of the wider vocabulary may hold at most this much softmax(z / T) mass at any valid position.
PAD_MASS_TOLERANCE = 1e-4

# (log p_s, log p_t, beta) -> per-row divergence (c,), its gradient w.r.t. a = s / T (c, V). Both inputs belong to
# the chunk and are overwritten (in-place ops keep a chunk's temporaries to a few (c, V) tensors); the gradient may
# reuse their storage.
Divergence = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _weighted_log_ratio_(p: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """`p * log_ratio` in place of `log_ratio`, with the entries where `p = 0` set to 0 (not 0 * inf = NaN)."""
    return log_ratio.mul_(p).masked_fill_(p == 0, 0.0)


def _forward_kl(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    p_t = log_t.exp()
    value = _weighted_log_ratio_(p_t, log_t.sub_(log_s)).sum(-1)  # sum p_t (log p_t - log p_s)
    return value, log_s.exp_().sub_(p_t)  # p_s - p_t


def _reverse_kl(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    p_s = log_s.exp()
    terms = _weighted_log_ratio_(p_s, log_s.sub_(log_t))  # (c, V) p_s (log p_s - log p_t)
    kl = terms.sum(-1)
    # p_s * (log p_s - log p_t - KL); written with `terms` so that p_s = 0 entries give 0, not NaN
    return kl, terms.sub_(p_s.mul_(kl[:, None]))


def _jsd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    if beta == 0.0:  # m = p_s: the mixture formula is 0; docs/methods.md, section 5, defines this end as forward KL
        return _forward_kl(log_s, log_t, beta)
    if beta == 1.0:  # m = p_t: likewise reverse KL
        return _reverse_kl(log_s, log_t, beta)
    log_m = log_t + math.log(beta)  # (c, V)
    torch.logaddexp(log_m, log_s + math.log1p(-beta), out=log_m)  # log(beta p_t + (1 - beta) p_s)
    p_t = log_t.exp()
    teacher_kl = _weighted_log_ratio_(p_t, log_t.sub_(log_m)).sum(-1)  # KL(p_t || m)
    del p_t
    p_s = log_s.exp()
    student_terms = _weighted_log_ratio_(p_s, log_s.sub_(log_m))  # (c, V) p_s (log p_s - log m)
    student_kl = student_terms.sum(-1)  # KL(p_s || m)
    grad = student_terms.sub_(p_s.mul_(student_kl[:, None])).mul_(1.0 - beta)
    return beta * teacher_kl + (1.0 - beta) * student_kl, grad


def _tvd(log_s: torch.Tensor, log_t: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    p_s = log_s.exp_()
    diff = log_t.exp_().sub_(p_s).neg_()  # p_s - p_t
    value = 0.5 * diff.abs().sum(-1)
    g = diff.sign_().mul_(0.5)  # dTVD/dp_s
    return value, g.sub_((p_s * g).sum(-1, keepdim=True)).mul_(p_s)  # p_s * (g - <p_s, g>)


DIVERGENCES: dict[str, Divergence] = {
    "forward_kl": _forward_kl,
    "reverse_kl": _reverse_kl,
    "jsd": _jsd,
    "tvd": _tvd,
}
assert tuple(DIVERGENCES) == get_args(DivergenceName)


def _padding_mass(logits: torch.Tensor, shared: int, temperature: float) -> torch.Tensor:
    """Per row, the softmax(z / T) mass on the columns from `shared` on: (c, V) -> (c,)."""
    extra = torch.logsumexp(logits[:, shared:] / temperature, dim=-1)
    return (extra - torch.logsumexp(logits / temperature, dim=-1)).exp()


def token_divergence_rows(
    student_rows: torch.Tensor,
    targets: ChunkTargets,
    need_grad: bool,
    *,
    divergence: DivergenceName,
    beta: float,
    temperature: float,
    pad_mass: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token divergence on gathered rows, and its gradient w.r.t. the student logits (a `losses.chunked.RowLoss`).

    Compares the shared leading `min(V, V')` columns; the largest padding mass of the wider side is appended to
    `pad_mass` (checked by the caller once, after the chunk loop, to avoid a host-device sync per chunk). A teacher
    given as stored top-k log-probabilities (`TopKRows`) goes to `topk_divergence_rows`.

    Args:
        student_rows: (c, V) student logits in the compute dtype; overwritten (the chunk's own copy).
        targets: the chunk's teacher rows, (c, V') logits in the compute dtype (overwritten) or `TopKRows`.
        need_grad: also return the gradient of the summed divergence w.r.t. `student_rows[:, :min(V, V')]`.
        divergence, beta, temperature: as in `TokenDivergenceLoss`.
        pad_mass: collects the padding mass of each chunk (only when V != V').

    Returns:
        (c,) divergences and the (c, min(V, V')) gradient (or None).
    """
    teacher_rows = targets.teacher
    if isinstance(teacher_rows, TopKRows):
        return topk_divergence_rows(
            student_rows,
            teacher_rows,
            need_grad,
            divergence=divergence,
            beta=beta,
            temperature=temperature,
            pad_mass=pad_mass,
        )
    assert teacher_rows is not None, "a token divergence needs the teacher's rows"
    shared = min(student_rows.shape[-1], teacher_rows.shape[-1])
    wider = student_rows if student_rows.shape[-1] > shared else teacher_rows
    if wider.shape[-1] > shared and wider.shape[0] > 0:
        pad_mass.append(_padding_mass(wider, shared, temperature).max())
    log_s = log_softmax_(student_rows[:, :shared], temperature)  # (c, V0)
    log_t = log_softmax_(teacher_rows[:, :shared], temperature)  # (c, V0)
    value, grad_a = DIVERGENCES[divergence](log_s, log_t, beta)
    if not need_grad:
        return value, None
    return value, (grad_a if temperature == 1.0 else grad_a.div_(temperature))


def topk_divergence_rows(
    student_rows: torch.Tensor,
    top: TopKRows,
    need_grad: bool,
    *,
    divergence: DivergenceName,
    beta: float,
    temperature: float,
    pad_mass: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The divergence against a teacher stored as its top-k log-probabilities and one tail bucket.

    Both distributions are collapsed onto the same k + 1 buckets: the teacher's k kept entries, one each, and the
    rest of the shared vocabulary in one; the divergence is taken between the bucket distributions. With k = V the
    tail is empty and this is the divergence of the full distributions. The gradient w.r.t. the student logits
    follows from `dq_b/ds_j = p_j (1[j in b] - q_b)`: a kept entry gets its bucket's gradient, and an entry of the
    tail bucket the tail's gradient scaled by its share `p_j / q_tail` of the bucket.

    The teacher's entries beyond the student's vocabulary (a padded teacher vocabulary) join its tail bucket; their
    largest mass is appended to `pad_mass`, as the padding of logits is. The student's columns beyond the teacher's
    vocabulary are left out and the rest renormalized, as with logits. A temperature other than 1 needs k = V
    (`TokenDivergenceLoss` checks it): the tail's tempered mass is not known from the stored numbers.
    """
    shared = min(student_rows.shape[-1], top.vocab_size)
    if student_rows.shape[-1] > shared and student_rows.shape[0] > 0:
        pad_mass.append(_padding_mass(student_rows, shared, temperature).max())
    log_s = log_softmax_(student_rows[:, :shared], temperature)  # (c, V0)
    kept_here = top.indices < shared  # (c, k): entries the student has
    index = top.indices.clamp(max=shared - 1)
    teacher_kept = top.logprobs.masked_fill(~kept_here, -math.inf)
    if temperature != 1.0:  # exact storage only (k = V): temper the kept entries
        teacher_kept = log_softmax_(teacher_kept, temperature)
    beyond = top.logprobs.masked_fill(kept_here, -math.inf).logsumexp(-1)  # (c,) teacher mass past the student's
    if (~kept_here).any():
        pad_mass.append(beyond.exp().max())
    teacher_tail = torch.logaddexp(top.tail, beyond) if temperature == 1.0 else beyond.new_full(beyond.shape, -math.inf)
    in_top = torch.zeros_like(log_s, dtype=torch.int32).scatter_add_(1, index, kept_here.int()) > 0  # (c, V0)
    student_tail = log_s.masked_fill(in_top, -math.inf).logsumexp(-1)  # (c,)
    student_kept = log_s.gather(1, index).masked_fill(~kept_here, -math.inf)  # (c, k)
    log_q = torch.cat([student_kept, student_tail[:, None]], dim=1)  # (c, k + 1)
    log_t = torch.cat([teacher_kept, teacher_tail[:, None]], dim=1)
    value, grad_buckets = DIVERGENCES[divergence](log_q, log_t, beta)  # grad w.r.t. the buckets' logits
    if not need_grad:
        return value, None
    finite_tail = torch.isfinite(student_tail)
    share = (log_s - torch.where(finite_tail, student_tail, 0.0)[:, None]).exp_()  # (c, V0): p_j / q_tail
    grad = share.mul_(torch.where(finite_tail, grad_buckets[:, -1], 0.0)[:, None]).masked_fill_(in_top, 0.0)
    grad.scatter_add_(1, index, grad_buckets[:, :-1].masked_fill(~kept_here, 0.0))
    return value, (grad if temperature == 1.0 else grad.div_(temperature))


class TokenDivergenceLoss(nn.Module):
    """Per-token divergence between the teacher's and the student's next-token distributions, masked and chunked.

    At each position whose label is not `ignore_index`, with `p = softmax(z / T)` over the vocabulary:

    - `forward_kl`: `KL(p_t || p_s) = sum p_t (log p_t - log p_s)` (mode covering). The true KL, not the
      teacher-student cross-entropy (they differ by the teacher's entropy, which has no gradient but moves the value).
    - `reverse_kl`: `KL(p_s || p_t)` (mode seeking).
    - `jsd`: generalized Jensen-Shannon, `beta KL(p_t || m) + (1 - beta) KL(p_s || m)`, `m = beta p_t + (1 - beta)
      p_s`, as in GKD (Agarwal et al., 2024). The mixture formula tends to 0 at both ends, so beta = 0 is computed as
      forward KL and beta = 1 as reverse KL (docs/methods.md, section 5). For 0 < beta < 1 its value lies in
      `[0, h(beta)]`, `h(beta) = -beta log beta - (1 - beta) log(1 - beta) <= log 2`.
    - `tvd`: total variation distance `1/2 sum |p_t - p_s|`, in [0, 1].

    The loss is the SUM of the per-token divergences over the valid tokens divided by the number of valid tokens in
    the batch, so splitting a batch into micro-batches and weighting each by its token count gives the same value
    (`sum_and_count` returns both parts). A batch with no valid token gives 0 and zero (finite) gradients.

    No `T^2` factor: the value is the divergence of the tempered distributions, as in torchtune and TRL's GKD, where
    LM distillation runs at T = 1 and the factor is 1 anyway. The student gradient of forward KL is
    `(p_s - p_t) / T`; multiply the term's weight by `T^2` to get Hinton's gradient scale (`KDLoss` does).

    Vocabularies that differ only by padding (a teacher and a student sharing a tokenizer, the embedding padded to a
    multiple of 64 or 128): the shared leading `min(V, V')` columns are compared, each side renormalized over them.
    The extra columns of the wider side must be unused: at every valid position, their softmax(z / T) mass must be
    below `PAD_MASS_TOLERANCE` = 1e-4 (columns at -inf or far below the rest have mass ~0); otherwise a ValueError says
    the vocabularies differ beyond padding (different tokenizers need `GraphOnLogitsLoss`). Padded student columns
    get no gradient from this loss.

    Memory: the student logits are never cast to fp32 or softmaxed all at once. A custom autograd function processes
    the valid tokens `chunk_size` at a time, computing each chunk's divergence and its closed-form gradient w.r.t.
    the student logits in the forward pass; peak memory is the student logits, their gradient (in their dtype) and
    one chunk's fp32 temporaries. `fused` goes further and computes the student logits chunk by chunk from the last
    hidden states and the LM head, so they never exist in full.

    Args:
        divergence: one of "forward_kl", "reverse_kl", "jsd", "tvd".
        beta: the JSD mixture weight of the teacher, in [0, 1] (used by "jsd" only); 0 = forward KL, 1 = reverse KL.
        temperature: T (> 0); both distributions are softmax(logits / T). No T^2 factor (see above).
        ignore_index: label of the positions that are not distilled (prompt, padding).
        chunk_size: tokens per chunk (>= 1); None = all valid tokens in one chunk (same code path, most memory).

    Shapes:
        student_logits: (B, T, V), any float dtype (computed in fp32; fp64 stays fp64); the gradient has this dtype.
        teacher_logits: (B, T, V'), V' = V or padded; never receives gradient.
        labels: (B, T) integer; positions equal to `ignore_index` are left out.
        The logits must already be ALIGNED with the labels: for a causal LM the caller shifts them, e.g.
        `logits[:, :-1]` with `labels[:, 1:]`. Any leading shape works, e.g. (N, V) logits with (N,) labels.
        Returns a scalar: the mean per-token divergence over the valid tokens.
    """

    consumes = Consumes(TOKEN_LOGITS)

    def __init__(
        self,
        divergence: DivergenceName = "forward_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {divergence!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be a number in [0, 1], got {beta!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.divergence = divergence
        self.beta = float(beta)
        self.temperature = float(temperature)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, minimum=1)

    def extra_repr(self) -> str:
        beta = f", beta={self.beta}" if self.divergence == "jsd" else ""
        return (
            f"divergence={self.divergence!r}{beta}, temperature={self.temperature}, "
            f"ignore_index={self.ignore_index}, chunk_size={self.chunk_size}"
        )

    def row_loss(self, pad_mass: list[torch.Tensor]) -> Callable:
        """This divergence as a `losses.chunked.RowLoss` (to combine with other row losses over one chunk loop); the
        padding mass of each chunk is appended to `pad_mass`, for `check_padding` after the loop."""
        return partial(
            token_divergence_rows,
            divergence=self.divergence,
            beta=self.beta,
            temperature=self.temperature,
            pad_mass=pad_mass,
        )

    def check_teacher(self, teacher: TeacherSource) -> None:
        """Refuse a teacher this divergence cannot be computed from: stored top-k log-probabilities with k < V at a
        temperature other than 1 (the tail's tempered mass is unknown)."""
        if isinstance(teacher, TeacherTopK) and not teacher.exact and self.temperature != 1.0:
            raise ValueError(
                f"temperature {self.temperature} needs the teacher's whole distribution, but its stored top-k keeps "
                f"{teacher.logprobs.shape[-1]} of {teacher.vocab_size} entries: use temperature 1 or keep them all"
            )

    @staticmethod
    def check_padding(pad_mass: list[torch.Tensor], student_vocab: int, teacher_vocab: int) -> None:
        """Raise a ValueError if the columns only one side has held more than `PAD_MASS_TOLERANCE` of its mass."""
        if not pad_mass:
            return
        largest = torch.stack(pad_mass).max().item()
        if not largest < PAD_MASS_TOLERANCE:  # NaN fails too
            wider = "student" if student_vocab > teacher_vocab else "teacher"
            raise ValueError(
                f"student vocabulary {student_vocab} != teacher vocabulary {teacher_vocab}, and the {wider}'s "
                f"columns beyond the shared {min(student_vocab, teacher_vocab)} hold softmax mass up to {largest:.3g} "
                f"(padding must hold < {PAD_MASS_TOLERANCE:g}): the vocabularies differ beyond padding. Models with "
                "different tokenizers need GraphOnLogitsLoss."
            )

    def sum_and_count(
        self, student_logits: torch.Tensor, teacher: torch.Tensor | TeacherSource, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The sum of the per-token divergences over the valid tokens (scalar tensor) and their number (int).

        `forward` is `sum / max(count, 1)`; to normalize over several micro-batches, add up the sums and counts.
        `teacher` is the teacher's logits or a `losses.chunked.TeacherSource` (e.g. stored top-k log-probabilities).
        """
        source = as_teacher(teacher)
        self.check_teacher(source)
        pad_mass: list[torch.Tensor] = []
        total, count = masked_sum_and_count(
            self.row_loss(pad_mass), student_logits, source, labels, self.ignore_index, self.chunk_size
        )
        self.check_padding(pad_mass, student_logits.shape[-1], source.vocab_size)
        return total, count

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | TeacherSource, labels: torch.Tensor
    ) -> torch.Tensor:
        total, count = self.sum_and_count(student_logits, teacher_logits, labels)
        return total / max(count, 1)

    def fused(
        self,
        hidden: torch.Tensor,
        lm_head_weight: torch.Tensor,
        teacher: torch.Tensor | TeacherSource,
        labels: torch.Tensor,
        lm_head_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The same loss on the student logits `hidden @ lm_head_weight^T + lm_head_bias`, never materialized in full.

        Each chunk's logits are computed from its hidden states (in the weight's dtype, as the head would), and the
        gradients w.r.t. `hidden`, `lm_head_weight` and `lm_head_bias` are accumulated chunk by chunk (the weight and
        bias gradients in fp32 for lower-precision weights). Equal to `forward(F.linear(hidden, W, b), ...)`.

        Args:
            hidden: (B, T, H) the student's last hidden states, aligned with `labels` like the logits of `forward`.
            lm_head_weight: (V, H) the student's output projection.
            teacher: (B, T, V') logits, or a `losses.chunked.TeacherSource`: `TeacherHead(hidden, weight, bias)`
                computes the teacher's logits chunk by chunk too, so neither side's full logits ever exist.
            labels: (B, T) integer; `ignore_index` positions are left out.
            lm_head_bias: (V,) or None.

        Returns:
            A scalar, the mean per-token divergence over the valid tokens.
        """
        source = as_teacher(teacher)
        self.check_teacher(source)
        pad_mass: list[torch.Tensor] = []
        total, count = fused_masked_sum_and_count(
            self.row_loss(pad_mass),
            hidden,
            lm_head_weight,
            lm_head_bias,
            source,
            labels,
            self.ignore_index,
            self.chunk_size,
        )
        self.check_padding(pad_mass, lm_head_weight.shape[0], source.vocab_size)
        return total / max(count, 1)
