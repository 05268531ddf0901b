"""The offline chat recipes run end to end on a tiny budget: chat_kd_tiny (full and LoRA students, trained on the
assistant's turns of ChatML-rendered conversations) and gkd_tiny (the student's own samples in half the batches);
their real-scale counterparts are parsed by tests/test_bundled_recipes.py."""

from __future__ import annotations

import json

import torch

from distill.cli import main
from tests.cli.test_llm_recipes import TINY


def results(tmp_path, name: str, version: int = 0) -> dict:
    return json.loads((tmp_path / "runs" / name / f"version_{version}" / "results.json").read_text())["test"]


def test_chat_kd_tiny_trains_full_and_lora_students(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", "chat_kd_tiny", *TINY]) == 0
    lora = "student.lora={r: 4, target_modules: [q_proj, k_proj, v_proj, o_proj]}"
    assert main(["fit", "--recipe", "chat_kd_tiny", *TINY, lora]) == 0
    full, adapted = results(tmp_path, "chat_kd_tiny", 0), results(tmp_path, "chat_kd_tiny", 1)
    assert full["test/teacher_loss"] == adapted["test/teacher_loss"]  # the same teacher and validation turns
    assert full["test/loss"] != adapted["test/loss"]
    checkpoint = tmp_path / "runs" / "chat_kd_tiny" / "version_1" / "checkpoints" / "last.ckpt"
    assert all("lora_" in key for key in torch.load(checkpoint, weights_only=True)["state_dict"])


def test_gkd_tiny_runs_on_the_students_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--recipe", "gkd_tiny", *TINY, "causal_lm.sampling.max_new_tokens=16"]) == 0
    assert results(tmp_path, "gkd_tiny")["test/agreement"] >= 0
