"""What building token rows cost each split: documents dropped (nothing left to train on) and rows cut at the row
length, per side (the student's tokens, and the teacher's when it has a tokenizer of its own), told apart by where
the cut fell: in a prompt (later turns are lost) or inside a response (an answer is trained without its end, so the
model learns to stop less). Data setup warns in one line per split, and the run records the numbers (`data.json`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distill.data.text_rows import TokenRow


def cut_counts(rows: Sequence[TokenRow]) -> dict[str, int]:
    """Rows cut at the row length, by where the cut fell."""
    response = sum(row.cut_in_response for row in rows)
    return {"prompt_side": sum(row.truncated for row in rows) - response, "response_side": response}


def split_report(
    documents: int, rows: int, dropped: int, student: Sequence[TokenRow], teacher: Sequence[TokenRow] | None
) -> dict[str, Any]:
    """One split's numbers: documents read, rows made, documents dropped, and rows cut per side."""
    cut = {"student": cut_counts(student)}
    if teacher is not None:
        cut["teacher"] = cut_counts(teacher)
    return {"documents": documents, "rows": rows, "dropped": dropped, "truncated": cut}


def warning(split: str, what: str, report: dict[str, Any], limits: dict[str, str]) -> str | None:
    """The split's one-line warning, or None when nothing was cut or dropped. `what` names the documents
    ('conversations'), `limits` the setting that cut each side (`{"student": "data.seq_len=2048"}`)."""
    parts = []
    for side, counts in report["truncated"].items():
        total = counts["prompt_side"] + counts["response_side"]
        if total:
            parts.append(
                f"{total} cut at {limits[side]} ({counts['prompt_side']} in a prompt, {counts['response_side']} "
                f"inside a response)" + (" on the teacher's side" if side == "teacher" else "")
            )
    if report["dropped"]:
        parts.append(f"{report['dropped']} dropped: no response token left within the row")
    if not parts:
        return None
    return f"data ({split}): of {report['documents']} {what}, " + "; ".join(parts)
