"""(slow, `pytest -m slow`) Feature terms under 2-process DDP and FSDP (gloo, CPU): the layers are read by hooks on
each rank's models (FSDP: on the sharded student), the projectors train with the student, and both strategies end
with the student and projectors of one process with the same global batch."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.test_strategies import distill, write_recipe

FEATURE_TERMS = {
    # the student's hidden ReLU (32) to the teacher's (16) through FitNet's regressor (a linear layer on vectors)
    "fitnet": {"weight": 1.0, "student": "net.2", "teacher": "head.3"},
    # and to the teacher's pooled embedding (16), another regressor. Per-sample terms only: a term over the batch's
    # relations (SP, RKD, PKT, CRD's negatives) sees each rank's half of the batch, not the global batch
    "hint_pooled": {"loss": "fitnet", "weight": 0.5, "student": "net.2", "teacher": "head.1"},
}


@pytest.mark.slow
def test_feature_terms_under_ddp_and_fsdp_train_the_student_and_projector_of_one_process(tmp_path):
    path = write_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["loss"]["terms"].update(FEATURE_TERMS)
    path.write_text(yaml.safe_dump(recipe))
    runs = {
        "one": [],
        "ddp": ["data.batch_size=32", "trainer.devices=2", "trainer.strategy=ddp"],
        "fsdp": ["data.batch_size=32", "trainer.devices=2", "trainer.strategy=fsdp"],
    }
    for name, overrides in runs.items():
        done = distill(tmp_path, "--recipe", str(path), f"run.name={name}", *overrides)
        assert done.returncode == 0, done.stderr[-2000:]
    states = {
        name: torch.load(tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in runs
    }
    single = states["one"]["state_dict"]
    assert {"terms.fitnet.projectors.0.proj.weight", "terms.hint_pooled.projectors.0.proj.weight"} <= set(single)
    for name in ("ddp", "fsdp"):
        assert states[name]["global_step"] == states["one"]["global_step"] == 17
        assert list(states[name]["state_dict"]) == list(single)  # the student and the projector, nothing else
        for key, value in single.items():
            torch.testing.assert_close(states[name]["state_dict"][key], value, rtol=1e-3, atol=1e-3, msg=key)
