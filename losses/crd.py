"""Contrastive Representation Distillation, CRD (Tian, Krishnan, Isola, ICLR 2020).

Checked against the authors' code (HobbitLong/RepDistiller: `crd/criterion.py`, `crd/memory.py`; the same code in
megvii-research/mdistiller, `mdistiller/distillers/CRD.py`). Deliberate differences:
- Negatives. Here K rows are drawn uniformly with replacement, as their `ContrastMemory` does when it is given no
  `contrast_idx`; their CIFAR-100 training passes `contrast_idx` from the data set instead (`CIFAR100InstanceSample`,
  mode "exact": K samples of the other classes, without replacement). The draw comes from a seed and a counter the
  module owns and saves in its state dict, so a resumed run draws what the uninterrupted run would have.
- NCE in log space: `-log(p0 / (p0 + c)) = softplus(log c - log p0)` and `-log(c / (pk + c)) = softplus(log pk -
  log c)`, without their `+ 1e-7` in the denominators (a 1e-7 relative change at c = K/N = 0.33).
- Z is a buffer set without a host sync (theirs: a Python float from `.item()`); `F.normalize` (eps 1e-12) instead of
  dividing by the norm; fp32 compute; nothing is written in eval mode (validation indices would overwrite bank rows).
- `queue=True` is not in their code (see `CRDLoss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from losses._common import batch_mean, check_flag, check_int, check_positive, compute_dtype
from losses.consumes import FEATURES, Consumes

__all__ = ["CRDLoss", "nce_loss"]


def nce_loss(log_scores: torch.Tensor, noise: float) -> torch.Tensor:
    """CRD's NCE loss of one direction, from the log of the normalized scores.

    With `p = exp(log_scores)` (the scores `exp(<m, v>/T)` divided by Z) and the noise `c = K/N`:
    `-(1/B) [sum_i log(p_i0 / (p_i0 + c)) + sum_{i,k} log(c / (p_ik + c))]`.

    Args:
        log_scores: (B, 1 + K), `<m, v>/T - log Z`; column 0 is the positive, the others the negatives.
        noise: `c = K/N` (> 0), K negatives drawn from a data set of N samples.

    Returns:
        A scalar; 0 (in the graph) for B = 0.
    """
    log_noise = math.log(noise)
    positive = F.softplus(log_noise - log_scores[:, 0])  # (B,), -log(p0 / (p0 + c))
    negative = F.softplus(log_scores[:, 1:] - log_noise).sum(dim=-1)  # (B,), -sum_k log(c / (pk + c))
    return batch_mean(positive + negative)


def _single_pair(features: torch.Tensor | Sequence[torch.Tensor], side: str) -> torch.Tensor:
    items = [features] if isinstance(features, torch.Tensor) else list(features)
    if len(items) != 1:
        raise ValueError(f"CRDLoss takes one {side} feature (one pair of layers), got {len(items)}")
    return items[0]


def gather_from_ranks(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each tensor `(B_r, ...)` concatenated over the processes of a running `torch.distributed` group, in rank
    order (batches may differ in size); as given outside one. Every rank must call it, with the same tensors None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    present = [t for t in tensors if t is not None]
    size = torch.tensor([present[0].shape[0]], device=present[0].device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(sizes))
    gathered = []
    for tensor in tensors:
        if tensor is None:
            gathered.append(None)
            continue
        padded = tensor.new_zeros(longest, *tensor.shape[1:])
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[: int(n)] for part, n in zip(parts, sizes, strict=True)]))
    return tuple(gathered)


class CRDLoss(nn.Module):
    """CRD: contrast each sample's student embedding with the teacher's, and the other way round, against a memory.

    `v_s = normalize(W_s f_s)`, `v_t = normalize(W_t f_t)` (`f` flattened per sample, the embeddings learned with the
    student). Bank mode (default): two banks of N rows (`memory_student`, `memory_teacher`), initialised uniform in
    `[-stdv, stdv]`, `stdv = 1/sqrt(embed_dim/3)`. Each sample gets K negative rows drawn uniformly with replacement;
    the student embedding is scored against the teacher bank's rows (its own `indices` row first, then the negatives),
    the teacher embedding against the student bank's, `exp(<m, v>/T) / Z`. Z is fixed per direction from the first
    training batch, `N * mean(scores)`, and kept in the `normalizers` buffer. The loss is `nce_loss` with noise K/N,
    summed over both directions. Afterwards each bank's rows of the batch move to `normalize(momentum * m + (1 -
    momentum) * v)` of their own side (no gradient). The teacher-anchored direction trains only `embed_teacher`.

    Queue mode (`queue=True`, for data sets too large for a bank of N rows): each memory is a FIFO queue of the last K
    embeddings of its side (`queue_pointer` is the next slot; a fresh queue holds the uniform initial rows). The
    negatives are the whole queue (the same K for every sample), the positive is the other side's current embedding
    (detached, as a bank row would be), the noise is still K/N with N = `num_samples`; `indices` are not used.

    Under `torch.distributed` (DDP, FSDP) the memories are updated with every process's rows (gathered), so they
    stay the same on every rank; every rank draws the same negative rows (one seed and step).

    Negatives are drawn from a generator seeded with `seed + step`: the seed is drawn from torch's global RNG at
    construction (deterministic given `torch.manual_seed`), the step counts training draws, and both are the
    module's extra state, saved and restored with its state dict. In eval mode nothing is updated (memory, Z, step).
    Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64), autocast off; the teacher is detached.

    Args:
        student_dim: size of the student feature per sample (flattened).
        teacher_dim: size of the teacher feature per sample (flattened).
        num_samples: N, the size of the training set (the bank's rows; the noise is K/N).
        embed_dim: size of the embeddings.
        negatives: K, negatives per sample (the queue's length in queue mode).
        temperature: T (> 0).
        momentum: weight of the old bank row in its update, in [0, 1].
        queue: use FIFO queues of the last K embeddings instead of the banks.

    Shapes:
        student_features: (B, ...) or a list of one; teacher_features: the same, (B, ...). indices: (B,) integer
        dataset indices in [0, num_samples), distinct within a batch (a repeated row keeps one of its updates),
        required in bank mode; checking their range costs one host sync. Returns a scalar, 0 for B = 0.
    """

    consumes = Consumes(FEATURES, extra=("indices",))
    shape_arguments = ("student_dim", "teacher_dim")

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_samples: int,
        embed_dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        queue: bool = False,
    ) -> None:
        super().__init__()
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.negatives = check_int("negatives", negatives, minimum=1)
        self.temperature = check_positive("temperature", temperature)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.queue = check_flag("queue", queue)
        self.embed_student = nn.Linear(check_int("student_dim", student_dim, 1), check_int("embed_dim", embed_dim, 1))
        self.embed_teacher = nn.Linear(check_int("teacher_dim", teacher_dim, 1), embed_dim)
        rows, stdv = (negatives if queue else num_samples), 1.0 / math.sqrt(embed_dim / 3)
        self.register_buffer("memory_student", torch.rand(rows, embed_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(rows, embed_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("normalizers", torch.zeros(2))  # Z of (student-, teacher-anchored); 0 = not set yet
        if queue:
            self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        self._seed = int(torch.randint(2**62, ()).item())
        self._step = 0

    @classmethod
    def from_shapes(
        cls, student_shapes: list[tuple[int, ...]], teacher_shapes: list[tuple[int, ...]], **kwargs
    ) -> CRDLoss:
        """Build the loss from per-sample feature shapes (no batch dim) of exactly one pair, plus the other arguments.

        Args:
            student_shapes: one shape, e.g. `[(256,)]` (flattened to `student_dim`).
            teacher_shapes: one shape (flattened to `teacher_dim`).
            kwargs: the other constructor arguments (`num_samples`, ...).
        """
        if len(student_shapes) != 1 or len(teacher_shapes) != 1:
            raise ValueError(f"CRD takes one pair of features, got {len(student_shapes)} and {len(teacher_shapes)}")
        if given := sorted(set(kwargs) & set(cls.shape_arguments)):
            raise ValueError(f"{', '.join(given)} come from the feature shapes, do not pass them")
        return cls(student_dim=math.prod(student_shapes[0]), teacher_dim=math.prod(teacher_shapes[0]), **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, negatives={self.negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}, queue={self.queue}"
        )

    def get_extra_state(self) -> dict[str, int]:
        return {"seed": self._seed, "step": self._step}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._seed, self._step = int(state["seed"]), int(state["step"])

    def draw_negatives(self, batch: int, device: torch.device) -> torch.Tensor:
        """(batch, K) bank rows drawn uniformly with replacement; the step advances in training mode only."""
        generator = torch.Generator(device=device).manual_seed(self._seed + self._step)
        self._step += int(self.training)
        return torch.randint(self.num_samples, (batch, self.negatives), generator=generator, device=device)

    def _check_indices(self, indices: torch.Tensor | None, batch: int) -> torch.Tensor:
        if indices is None:
            raise ValueError("CRDLoss needs the samples' dataset indices: call it with indices=(B,) in bank mode")
        if indices.shape != (batch,) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be (B,) = ({batch},) integers, got {tuple(indices.shape)} {indices.dtype}")
        if batch and (int(indices.min()) < 0 or int(indices.max()) >= self.num_samples):  # one host sync
            low, high = int(indices.min()), int(indices.max())
            raise ValueError(f"indices must lie in [0, num_samples={self.num_samples}), got values in [{low}, {high}]")
        return indices.to(self.memory_student.device)

    def forward(
        self,
        student_features: torch.Tensor | Sequence[torch.Tensor],
        teacher_features: torch.Tensor | Sequence[torch.Tensor],
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        f_s, f_t = _single_pair(student_features, "student"), _single_pair(teacher_features, "teacher")
        if f_s.dim() == 0 or f_t.dim() == 0 or f_s.shape[0] != f_t.shape[0]:
            raise ValueError(f"student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} must share the batch dim")
        batch = f_s.shape[0]
        if not self.queue:
            indices = self._check_indices(indices, batch)
        dtype = torch.promote_types(compute_dtype(f_s), self.embed_student.weight.dtype)
        with torch.autocast(f_s.device.type, enabled=False):
            v_s = self._embed(self.embed_student, f_s.to(dtype), "student")  # (B, E)
            v_t = self._embed(self.embed_teacher, f_t.detach().to(dtype), "teacher")  # (B, E)
            if batch == 0:  # exactly 0, connected to the student and to both embeddings
                return v_s.sum() + v_t.sum()
            if self.queue:
                logits_s = self._queue_logits(v_s, v_t.detach(), self.memory_teacher)  # (B, 1 + K)
                logits_t = self._queue_logits(v_t, v_s.detach(), self.memory_student)
            else:
                rows = torch.cat([indices[:, None], self.draw_negatives(batch, indices.device)], dim=1)  # (B, 1 + K)
                logits_s = torch.einsum("bke,be->bk", self.memory_teacher[rows].to(dtype), v_s) / self.temperature
                logits_t = torch.einsum("bke,be->bk", self.memory_student[rows].to(dtype), v_t) / self.temperature
            log_z = self._log_normalizers(logits_s.detach(), logits_t.detach()).to(dtype)  # (2,)
            noise = self.negatives / self.num_samples
            loss = nce_loss(logits_s - log_z[0], noise) + nce_loss(logits_t - log_z[1], noise)
        if self.training:
            self._update_memory(v_s.detach(), v_t.detach(), indices)
        return loss

    def _embed(self, linear: nn.Linear, x: torch.Tensor, side: str) -> torch.Tensor:
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (B, D); works for B = 0
        if x.shape[1] != linear.in_features:
            raise ValueError(
                f"{side} feature has {x.shape[1]} values per sample, the loss expects {linear.in_features}"
            )
        return F.normalize(F.linear(x, linear.weight.to(x.dtype), linear.bias.to(x.dtype)), dim=1)

    def _queue_logits(self, anchor: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        first = (anchor * positive).sum(dim=1, keepdim=True)  # (B, 1)
        queue = queue.to(anchor.dtype, copy=True)  # a snapshot: backward needs it after the queue is updated in place
        return torch.cat([first, anchor @ queue.T], dim=1) / self.temperature  # (B, 1 + K)

    @torch.no_grad()
    def _log_normalizers(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """log Z per direction: the stored Z once set, else `N * mean(exp(logits))` of this batch (kept if training)."""
        fresh = torch.stack([x.flatten().logsumexp(0) - math.log(x.numel()) for x in (logits_s, logits_t)])
        fresh = (fresh + math.log(self.num_samples)).exp().to(self.normalizers.dtype)
        z = torch.where(self.normalizers > 0, self.normalizers, fresh)  # no host sync
        if self.training:
            self.normalizers.copy_(z)
        return z.log()

    @torch.no_grad()
    def _update_memory(self, v_s: torch.Tensor, v_t: torch.Tensor, indices: torch.Tensor | None) -> None:
        v_s, v_t, indices = gather_from_ranks(v_s, v_t, indices)  # every rank's rows, so the memories stay one
        for memory, v in ((self.memory_student, v_s), (self.memory_teacher, v_t)):
            if self.queue:  # a batch longer than the queue keeps its last K rows
                v = v[-self.negatives :]
                slots = (self.queue_pointer + torch.arange(len(v), device=memory.device)) % self.negatives
                memory.index_copy_(0, slots, v.to(memory.dtype))
            else:
                mixed = self.momentum * memory[indices] + (1 - self.momentum) * v.to(memory.dtype)
                memory.index_copy_(0, indices, F.normalize(mixed, dim=1))
        if self.queue:
            self.queue_pointer.copy_((self.queue_pointer + min(len(v_s), self.negatives)) % self.negatives)
