"""The README's "Your own loss" runs as written: its user file and recipe are written to a fresh folder and its
command runs there through the console script (with a smaller budget appended), so the example cannot rot."""

from __future__ import annotations

import csv
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
DISTILL = str(Path(sys.executable).parent / "distill")
BUDGET = [
    "trainer.max_epochs=1",
    "teacher.train.trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "teacher.train.trainer.limit_train_batches=4",
    "trainer.log_every_n_steps=1",
]


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """`(language, body)` of each fenced block."""
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL)


def test_the_documented_own_loss_trains_as_written(tmp_path):
    blocks = code_blocks(readme_section("Your own loss"))
    files = {body.splitlines()[0].removeprefix("# "): body for lang, body in blocks if lang in ("python", "yaml")}
    assert set(files) == {"my_losses.py", "my_kd.yaml"}  # each block's first line names its file
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (command,) = [shlex.split(body) for lang, body in blocks if lang == "bash"]
    assert command[:2] == ["distill", "fit"] and "--allow-module" in command

    done = subprocess.run([DISTILL, *command[1:], *BUDGET], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "student accuracy" in done.stdout
    (run,) = (tmp_path / "runs" / "my_kd").glob("version_*")
    assert "my_losses:SoftTargetL2" in (run / "recipe.yaml").read_text()
    with open(run / "logs" / "metrics.csv") as file:
        values = [float(row["train/soft_l2"]) for row in csv.DictReader(file) if row.get("train/soft_l2")]
    assert values and all(math.isfinite(v) and v >= 0 for v in values)  # the user's loss ran in the training steps
