"""What a causal-LM task reports on validation and test: per-batch sums (the student's NLL and, with a teacher on the
same tokens, the KL to it, next-token agreement and the teacher's own NLL), computed a chunk of tokens at a time,
and the epoch's per-token metrics made from them."""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.tasks.lm_outputs import LMOutputs, TeacherView
from losses import TokenDivergenceLoss
from losses.chunked import ChunkTargets, chunk_sums, cross_entropy_rows
from losses.teacher_rows import TopKRows

SUMS = ("nll", "tokens", "kl", "agree", "teacher_nll")  # the sums kept per stage, in `<stage>_<sum>` metrics


def evaluation_sums(
    student: LMOutputs,
    teacher: TeacherView | None,
    labels: torch.Tensor,
    report_kl: TokenDivergenceLoss,
    chunk_size: int,
) -> tuple[dict[str, torch.Tensor], int]:
    """Summed student NLL, and with a teacher the summed KL, agreement and teacher NLL, a chunk at a time; and the
    number of labelled tokens."""
    source = None if teacher is None else teacher.source()
    padding: list[torch.Tensor] = []
    kl_rows = report_kl.row_loss(padding)

    def stats(rows: torch.Tensor, targets: ChunkTargets) -> dict[str, torch.Tensor]:
        out = {}
        if targets.teacher is not None:
            top = targets.teacher
            teacher_top = top.indices[:, 0] if isinstance(top, TopKRows) else top.argmax(-1)
            out["agree"] = (rows.argmax(-1) == teacher_top).sum().float()
            if not isinstance(top, TopKRows):
                out["teacher_nll"] = cross_entropy_rows(top.clone(), targets, False)[0].sum()
            out["kl"] = kl_rows(rows.clone(), targets.copy(), False)[0].sum()
        out["nll"] = cross_entropy_rows(rows, targets, False)[0].sum()
        return out

    if source is not None:
        report_kl.check_teacher(source)
    sums, tokens = chunk_sums(stats, student.as_rows(), source, labels, -100, chunk_size)
    if teacher is not None and teacher.stored is not None:
        valid = labels != -100
        sums["teacher_nll"] = -teacher.stored.stat("label_logp")[valid].sum()
    if source is not None:
        report_kl.check_padding(padding, student.vocab_size, source.vocab_size)
    return sums, tokens


def epoch_metrics(sums: nn.ModuleDict, stage: str) -> dict[str, torch.Tensor]:
    """The stage's per-token loss, perplexity and teacher numbers from its summed metrics (which are reset); empty
    when nothing was summed."""
    updated = [what for what in SUMS if sums[f"{stage}_{what}"].update_count > 0]
    totals = {what: sums[f"{stage}_{what}"].compute() for what in updated}
    for what in SUMS:
        sums[f"{stage}_{what}"].reset()
    if "tokens" not in totals:
        return {}
    tokens = totals["tokens"].clamp(min=1)
    loss = totals["nll"] / tokens
    metrics = {f"{stage}/loss": loss, f"{stage}/ppl": torch.exp(loss.clamp(max=math.log(1e6)))}
    if "teacher_nll" in totals:
        teacher_loss = totals["teacher_nll"] / tokens
        metrics |= {
            f"{stage}/kl": totals["kl"] / tokens,
            f"{stage}/agreement": totals["agree"] / tokens,
            f"{stage}/teacher_loss": teacher_loss,
            f"{stage}/teacher_ppl": torch.exp(teacher_loss.clamp(max=math.log(1e6))),
        }
    return metrics
