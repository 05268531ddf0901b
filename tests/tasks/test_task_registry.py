"""Adding a task is one module: a task registered from this test module alone (its LightningModule, its spec with a
recipe section of its own, summary rows and monitored metric) trains, validates and tests through the CLI entry
point, and every registered task describes itself completely."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.cli import main
from distill.config.schema import Recipe, setting
from distill.engine.run_folder import RunCheckpoint
from distill.tasks import TASKS, BuildContext, SummaryRow, TaskSpec, register_task, task_spec
from distill.tasks.base import DistillationTask, mean_metrics
from distill.tasks.loss_terms import LOSSES
from tests.helpers import FAST_TRAINER, write_recipe


@dataclass
class ProbeSettings:
    """The probe task's own recipe section."""

    logit_scale: float = setting(1.0, "multiplies the student's logits before the CE")


class ProbeTask(DistillationTask):
    """Trains the student on CE of scaled logits; reports accuracy and how often it agrees with the teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, logit_scale: float, **common) -> None:
        super().__init__(student, {"teacher": teacher}, **common)
        self.logit_scale = logit_scale
        self.means = mean_metrics(("acc", "agreement"))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.logit_scale * self.student(x), y)
        self.log("train/loss", loss)
        return loss

    def evaluate_batch(self, batch, batch_idx, stage):
        x, y = batch
        predicted = self.student(x).argmax(1)
        with torch.no_grad():
            teacher = self.teacher(x).argmax(1)
        self.log_mean(stage, "acc", (predicted == y).float().mean(), len(y))
        self.log_mean(stage, "agreement", (predicted == teacher).float().mean(), len(y))


def build_probe(ctx: BuildContext) -> ProbeTask:
    return ProbeTask(ctx.student(), ctx.teacher, ctx.settings.logit_scale, **ctx.common())


PROBE = TaskSpec(
    name="probe",
    description="a task defined in a test module",
    build=build_probe,
    monitor=("acc", "max"),
    summary=(SummaryRow("probe accuracy", "acc", percent=True), SummaryRow("probe agreement", "agreement", True)),
    settings=ProbeSettings,
)


@pytest.fixture
def probe_task():
    register_task(PROBE)
    yield PROBE
    TASKS.remove(PROBE.name)


def probe_recipe(tmp_path: Path, teacher_file: Path) -> Path:
    return write_recipe(
        tmp_path / "probe.yaml",
        {
            "task": "probe",
            "probe": {"logit_scale": 2.0},
            "run": {"root": str(tmp_path / "runs"), "name": "probe"},
            "data": {"name": "digits", "batch_size": 64},
            "student": {"name": "convnet", "widths": [8, 8], "hidden": 0},
            "teacher": {"model": {"name": "convnet", "widths": [8, 8], "hidden": 0}, "checkpoint": str(teacher_file)},
            "loss": {"ce_weight": 1.0},
            "optimizer": {"name": "adamw", "lr": 0.02},
            "scheduler": {"name": "constant"},
            "trainer": {**FAST_TRAINER, "max_epochs": 2},
        },
    )


def test_a_task_registered_from_a_test_module_fits_validates_and_tests_through_the_cli(probe_task, tmp_path, capsys):
    from distill.models import create_model

    torch.manual_seed(3)
    teacher_file = tmp_path / "teacher.pt"
    torch.save({"model": create_model("convnet", 10, 1, widths=[8, 8], hidden=0).state_dict()}, teacher_file)
    recipe = probe_recipe(tmp_path, teacher_file)

    assert main(["fit", "--recipe", str(recipe), "--print"]) == 0
    printed = capsys.readouterr().out
    assert "probe:\n  logit_scale: 2.0" in printed  # the task's own section, checked and printed

    assert main(["fit", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "probe accuracy" in out and "probe agreement" in out  # its own summary rows
    (run,) = (tmp_path / "runs" / "probe").glob("version_*")
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["test/acc"] > 0.5  # learned the digits in 2 epochs (chance: 0.1)
    checkpoint = RunCheckpoint.read(results["best_checkpoint"])
    assert checkpoint.sources["teacher"]["weights"] == str(teacher_file)
    assert all(key.startswith("student.") for key in checkpoint.state)

    for command, split in (("validate", "validation split"), ("test", "test split")):
        assert main([command, "--checkpoint", results["best_checkpoint"]]) == 0
        out = capsys.readouterr().out
        assert split in out and "probe accuracy" in out
    assert f"{100 * results['test']['test/acc']:.2f}%" in out  # test reproduces the run's own test

    assert main(["fit", "--recipe", str(recipe), "probe.logit_scle=3"]) == 2
    assert "unknown key 'probe.logit_scle' (did you mean 'logit_scale'?)" in capsys.readouterr().err


def test_a_task_section_key_cannot_shadow_a_recipe_key():
    with pytest.raises(ValueError, match="section 'optimizer' is a recipe key"):
        register_task(
            TaskSpec("shadow", "x", build_probe, ("acc", "max"), (), settings=ProbeSettings, section="optimizer")
        )
    assert "shadow" not in TASKS


@pytest.mark.parametrize("name", ["classification", "causal_lm", "dpo", "align_distil", "draft_distill", "amu"])
def test_every_bundled_task_describes_itself(name):
    spec = task_spec(name)
    assert spec.name == name and spec.description and spec.summary
    assert spec.monitor[1] in ("max", "min")
    assert spec.monitor[0] in {row.metric for row in spec.summary} | {"loss"}  # what picks the best is reported
    if spec.objective is not None:
        assert LOSSES.get(spec.objective).consumes.kind == "objective"
        assert spec.frozen["teacher"].required
    else:
        assert spec.accepts and all(LOSSES.get(loss).consumes.kind in spec.accepts for loss in fitting(spec))
    if spec.settings is not None:
        assert spec.settings_key not in {f.name for f in fields(Recipe)}


def fitting(spec: TaskSpec) -> list[str]:
    from distill.tasks.loss_terms import fitting_losses

    names = fitting_losses(spec)
    assert names, f"no registered loss fits {spec.name}"
    return names
