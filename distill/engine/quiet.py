"""Silence Lightning messages that are expected in distillation runs and would only confuse users."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"


def quiet_expected_messages() -> None:
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")
    # A resumed run writes into its own checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    logging.getLogger(LIGHTNING_INFO).addFilter(lambda record: "litlogger" not in record.getMessage())
    # DeepSpeed's import says so on a machine without GPUs; distill refuses DeepSpeed there in its own words
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())


@contextmanager
def held_back_info() -> Iterator[list[str]]:
    """Lightning's info lines logged inside the block (the devices it found) are kept in the yielded list instead
    of printed: a run refused right after still answers in one line. Print them with `release` once it goes on."""
    held: list[str] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        held.append(record.getMessage())
        return False

    logger = logging.getLogger(LIGHTNING_INFO)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def release(held: list[str]) -> None:
    logger = logging.getLogger(LIGHTNING_INFO)
    for message in held:
        logger.info(message)


@contextmanager
def held_back_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Warnings raised inside the block (the data's setup counting rows it cut or dropped) are kept in the yielded
    list instead of shown: a run refused right after still answers in one line. `show_warnings` shows them once the
    run goes on."""
    with warnings.catch_warnings(record=True) as caught:
        yield caught


def show_warnings(held: list[warnings.WarningMessage]) -> None:
    for warned in held:
        warnings.showwarning(warned.message, warned.category, warned.filename, warned.lineno)
