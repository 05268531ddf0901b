"""What notebooks and benchmarks call: predictions of finished runs, calibration, loss curves, plots, memory.

Finished runs are read through the engine's one run reader (`distill.engine.run_folder`, `distill.engine.pipeline`).
"""

from distill.analysis.predictions import (
    Predictions,
    Reliability,
    divergence_curves,
    logged,
    plackett_luce_weights,
    reliability,
    run_predictions,
)

__all__ = [
    "Predictions",
    "Reliability",
    "divergence_curves",
    "logged",
    "plackett_luce_weights",
    "reliability",
    "run_predictions",
]
