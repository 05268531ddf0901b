"""LoRA students and reduced-precision teachers: gradients reach the adapters and nothing else, checkpoints hold the
adapters only and evaluate as trained, target names are checked with the closest valid one, a merged student
computes what the adapted one did, and a bfloat16 teacher trains a float32 student."""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main
from distill.errors import DistillError
from distill.models import create_model
from distill.models.lora import LoRASettings, add_lora, has_lora, merge_lora, parameter_counts
from distill.tasks.causal_lm import CausalLMTask
from losses import TokenDivergenceLoss
from tests.cli.test_llm_recipes import TINY
from tests.tasks.test_causal_lm_task import batch


def tiny_llama(seed: int = 0, width: int = 32):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=259, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2)


def test_gradients_reach_the_adapters_and_nothing_else():
    student = add_lora(tiny_llama(), LoRASettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable, total = parameter_counts(student)
    assert 0 < trainable < total / 10
    task = CausalLMTask(student, tiny_llama(1, 48), terms={"kl": (0.5, TokenDivergenceLoss("forward_kl"))})
    task.training_step(batch(), 0).backward()
    with_grad = {name for name, p in student.named_parameters() if p.grad is not None}
    lora = {name for name, _ in student.named_parameters() if "lora_" in name}
    assert with_grad == lora and len(lora) == 2 * 2 * 2  # A and B, for 2 targets in 2 layers
    assert all(student.get_parameter(name).grad.abs().sum() > 0 for name in lora if "lora_B" in name)


def test_an_unknown_target_names_the_closest_layer():
    with pytest.raises(DistillError, match=r"no layer named 'q_prj' \(did you mean 'q_proj'\?\)"):
        add_lora(tiny_llama(), LoRASettings(target_modules=["q_prj"]))


def test_merging_gives_a_plain_model_with_the_adapted_outputs():
    student = add_lora(tiny_llama(), LoRASettings(r=4, target_modules=["q_proj", "o_proj", "down_proj"]))
    for name, parameter in student.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters an effect to merge
            parameter.data.normal_(0, 0.1)
    ids = torch.randint(0, 256, (2, 12))
    adapted = student(input_ids=ids).logits
    merged = merge_lora(student)
    assert not has_lora(merged)
    assert set(merged.state_dict()) == set(tiny_llama().state_dict())  # the base model's names
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)


def test_a_lora_run_keeps_adapter_only_checkpoints_that_evaluate_as_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lora = ["student.lora={r: 4, alpha: 8, target_modules: [q_proj, k_proj, v_proj, o_proj]}"]
    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, *lora]) == 0
    run = tmp_path / "runs" / "llm_kd_tiny" / "version_0"
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert state and all("lora_" in key for key in state)  # the frozen base is rebuilt from the recipe
    capsys.readouterr()
    assert main(["test", "--checkpoint", str(run / "checkpoints" / "best.ckpt")]) == 0
    tested = json.loads((run / "results.json").read_text())["test"]
    assert f"{tested['test/loss']:.4f}" in capsys.readouterr().out


def test_a_bfloat16_teacher_trains_a_float32_student():
    teacher = tiny_llama(1, 48)
    full = CausalLMTask(tiny_llama(), teacher, terms={"kl": (0.5, TokenDivergenceLoss("forward_kl"))})
    reference = full.training_step(batch(), 0).detach()
    half = CausalLMTask(
        tiny_llama(), teacher.to(torch.bfloat16), terms={"kl": (0.5, TokenDivergenceLoss("forward_kl"))}
    )
    loss = half.training_step(batch(), 0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(float(loss) - float(reference)) < 0.05 * float(reference)  # bf16 teacher logits, fp32 loss math
    assert all(p.dtype == torch.float32 for p in half.student.parameters())
