"""Pieces shared by the logit losses, written once: argument checks, the fp32 compute dtype with a
detached teacher, logit standardization, the per-row KL divergence and the (masked) batch mean."""

from __future__ import annotations

import torch


def check_positive(name: str, value: float) -> float:
    """Return `value` as a float, or raise a ValueError naming the argument."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """Return `value` as a float if it is finite and >= 0, or raise a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int | None = None) -> int:
    """Return `value` if it is an int (not a bool) no smaller than `minimum`, or raise a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return value


def check_flag(name: str, value: bool) -> bool:
    """Return `value` if it is a bool, or raise a ValueError naming the argument."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def linear_warmup(epoch: float | None, warmup_epochs: int, loss: str) -> float:
    """`min(epoch / warmup_epochs, 1)` for the 1-based `epoch`: a term's linear ramp-in (DKD, ReviewKD); 1 when
    `warmup_epochs` is 0.

    The authors' loops always ramp (mdistiller passes its 1-based epoch to every step), so a missing epoch is an
    error while the ramp is on, not a silent factor of 1: `warmup_epochs=0` is the explicit way to have no ramp.
    An epoch below 1 is refused too: epoch 0 would scale the term by exactly 0, the sign of a 0-based counter.
    """
    if epoch is None:
        if warmup_epochs == 0:
            return 1.0
        raise ValueError(
            f"{loss} ramps in over warmup_epochs={warmup_epochs} epochs: pass epoch (1-based: the first epoch is 1), "
            "or build it with warmup_epochs=0 for no ramp"
        )
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not epoch >= 1:
        raise ValueError(f"epoch must be a number >= 1 (1-based: the first epoch is 1), got {epoch!r}")
    if warmup_epochs == 0:
        return 1.0
    return min(float(epoch) / warmup_epochs, 1.0)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a loss computes in: fp32 for fp16/bf16/fp32 input; fp64 stays fp64 (so `gradcheck` works)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def prepare_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the shapes match; return both in the student's compute dtype, the teacher detached (no gradient)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    dtype = compute_dtype(student_logits)
    return student_logits.to(dtype), teacher_logits.detach().to(dtype)


def check_target(logits: torch.Tensor, target: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Require (B, C) logits and a (B,) integer target; return the target."""
    if target is None:
        raise ValueError(f"{loss} needs the target labels: call it as (student_logits, teacher_logits, target)")
    if logits.dim() != 2:
        raise ValueError(f"{loss} expects (B, C) logits, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target {tuple(target.shape)} does not match the batch of logits {tuple(logits.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    return target


def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Standardize logits per sample over the last (class) dim: `(l - mean) / (std + eps)` (docs/methods.md, section 2).

    The std is the unbiased one (divide by C - 1, `torch.std`'s default), as the authors' code uses; `eps` is added
    to the std, not the variance. `torch.std` has a zero (not NaN) backward for a constant row, which then maps to
    zeros. Computed in fp32 for fp16/bf16/fp32 input (fp64 stays fp64).

    Args:
        logits: (..., C) with C >= 2.
        eps: added to the std to keep constant rows finite.

    Returns:
        (..., C), the standardized logits in the compute dtype.
    """
    if logits.shape[-1] < 2:
        raise ValueError(f"zscore needs at least 2 classes (the unbiased std divides by C - 1), got {logits.shape}")
    x = logits.to(compute_dtype(logits))
    if x.numel() == 0:  # an empty batch: nothing to standardize (torch.std would warn about 0 degrees of freedom)
        return x.clone()
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)  # unbiased
    return (x - mean) / (std + eps)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`KL(p || q)` per row over the last dim from log-probabilities: (..., C) -> (...).

    Entries with `p = 0` (log-probability -inf: a class the target distribution rules out) contribute 0, not
    0 * inf = NaN, and send no gradient to `log_q`.
    """
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)


def batch_mean(per_sample: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `per_sample` over the samples (those where `valid`, if given); 0 for an empty or all-masked batch.

    The result stays connected to the graph, so `backward()` on an empty batch gives zero (finite) gradients.
    Dividing by a tensor count needs no host-device sync.
    """
    if valid is None:
        return per_sample.sum() / max(per_sample.numel(), 1)
    total = torch.where(valid, per_sample, 0.0).sum()
    return total / valid.sum().clamp(min=1).to(per_sample.dtype)


def as_mask(mask: torch.Tensor, shape: tuple[int, ...], name: str = "mask") -> torch.Tensor:
    """`mask` as a bool tensor of `shape`. Bool, integer and floating masks are accepted as long as they hold only
    0 and 1 (code in the EAGLE lineage passes float loss masks); any other value (0.5, 2, -1, NaN) is refused with a
    ValueError naming it, rather than silently read as "set"."""
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} {tuple(mask.shape)} does not match the (B, T) {tuple(shape)} of its logits")
    if mask.dtype == torch.bool:
        return mask
    if mask.dtype.is_complex:
        raise ValueError(f"{name} must be bool, integer or float 0/1, got {mask.dtype}")
    stray = (mask != 0) & (mask != 1)
    if bool(stray.any()):
        raise ValueError(f"{name} must hold only 0 and 1 (bool, integer or float), got {mask[stray][0].item()!r}")
    return mask != 0
