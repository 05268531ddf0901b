"""What notebooks and benchmarks call: predictions of finished runs, calibration, loss curves, plots, memory.

Finished runs are read through the engine's one run reader (`distill.engine.run_folder`, `distill.engine.pipeline`).
The names below are imported on first use, so that `python -m distill.analysis.memory` (a fresh process per
measurement) does not import the whole framework.
"""

from __future__ import annotations

import importlib
from typing import Any

_FROM_PREDICTIONS = (
    "Predictions",
    "Reliability",
    "divergence_curves",
    "logged",
    "plackett_luce_weights",
    "reliability",
    "run_predictions",
)

__all__ = [*_FROM_PREDICTIONS, "plots"]


def __getattr__(name: str) -> Any:
    if name in _FROM_PREDICTIONS:
        return getattr(importlib.import_module("distill.analysis.predictions"), name)
    if name == "plots":
        return importlib.import_module("distill.analysis.plots")
    raise AttributeError(f"module 'distill.analysis' has no attribute {name!r}")
