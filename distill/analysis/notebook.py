"""Where a notebook's runs and figures go: `$DISTILL_NOTEBOOK_OUT` when set (the tests set it), else a new
`runs/notebooks/<name>/version_N` folder."""

from __future__ import annotations

import os
from pathlib import Path

from distill.engine.runs import new_run_dir

OUT_ENV = "DISTILL_NOTEBOOK_OUT"


def output_folder(name: str, root: str = "runs/notebooks") -> Path:
    given = os.environ.get(OUT_ENV)
    if given:
        folder = Path(given) / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return new_run_dir(root, name)
