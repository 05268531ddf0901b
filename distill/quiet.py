"""Silence Lightning messages that are expected in distillation runs and would only confuse users."""

from __future__ import annotations

import logging
import warnings


def quiet_expected_messages() -> None:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")
    # A resumed run writes into its own checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
