"""Where a notebook's runs and figures go, and how long they train.

Runs and figures go to `$DISTILL_NOTEBOOK_OUT/<name>` when that is set, else to a new
`runs/notebooks/<name>/version_N` folder. Budgets (epochs, batches) pass through `budget`, which scales them by
`$DISTILL_NOTEBOOK_SCALE` (default 1): the test suite runs every notebook end to end at a fifth of its budgets.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.engine.runs import new_run_dir

OUT_ENV = "DISTILL_NOTEBOOK_OUT"
SCALE_ENV = "DISTILL_NOTEBOOK_SCALE"


def output_folder(name: str, root: str = "runs/notebooks") -> Path:
    given = os.environ.get(OUT_ENV)
    if given:
        folder = Path(given) / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return new_run_dir(root, name)


def budget(full: int) -> int:
    """`full` epochs or batches, scaled by `$DISTILL_NOTEBOOK_SCALE` (a number in (0, 1]; unset: 1), at least 1."""
    scale = float(os.environ.get(SCALE_ENV, "1"))
    if not 0 < scale <= 1:
        raise ValueError(f"{SCALE_ENV} must be in (0, 1], got {scale}")
    return max(1, round(full * scale))
