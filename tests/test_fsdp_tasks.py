"""(slow, `pytest -m slow`) Every offline task trains under `trainer.strategy: fsdp` with the frozen models sharded:
2 CPU processes, a few steps each (teachers trained first on a tiny budget)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DISTILL = str(Path(sys.executable).parent / "distill")
TINY_TEACHER = [
    f"{which}.train.trainer.{key}"
    for which in ("teacher", "second_teacher")
    for key in ("limit_train_batches=5", "max_epochs=1", "limit_val_batches=2")
]
FSDP = [
    "trainer.devices=2",
    "trainer.strategy=fsdp",
    "fsdp.frozen=shard",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
]
TEACHERS = {"amu_fewshot_tiny": ["teacher", "second_teacher"]}


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe", ["quickstart_digits", "llm_kd_tiny", "gld_tiny", "dpo_tiny", "specvlm_draft_tiny", "amu_fewshot_tiny"]
)
def test_task_trains_under_fsdp_with_its_frozen_models_sharded(tmp_path, recipe):
    frozen = TEACHERS.get(recipe, ["teacher"])
    tiny = [o for o in TINY_TEACHER if o.split(".")[0] in frozen]
    if recipe == "amu_fewshot_tiny":  # its frozen models train on a handful of digits: epochs only
        tiny = [o for o in tiny if ".max_epochs=" in o]
    done = subprocess.run(
        [DISTILL, "fit", "--recipe", recipe, *tiny, *FSDP, f"run.root={tmp_path}", f"teacher.store={tmp_path}/t"]
        + ([f"second_teacher.store={tmp_path}/t"] if "second_teacher" in frozen else []),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    laid_out = re.search(r"fsdp: 2 ranks; student sharded; (.*)", done.stdout).group(1)
    assert re.fullmatch(", ".join(rf"{name} sharded \(\d+\.\d MiB\)" for name in frozen), laid_out), laid_out
    assert done.stdout.count("run folder:") == 1
