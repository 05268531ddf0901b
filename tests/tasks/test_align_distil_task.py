"""The AlignDistil task: which positions are distilled, on-policy samples, frozen models kept out of training."""

from __future__ import annotations

import pytest
import torch

from distill.models import create_model
from distill.tasks.align_distil import AlignDistilTask, distilled_positions
from losses import AlignDistilLoss


def tiny_llama(seed: int):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=1)


def test_the_first_response_token_is_not_distilled():
    labels = torch.tensor([[-100, -100, 5, 6, 7, -100], [-100, 4, 4, 4, 4, 4]])
    # shifted: position t predicts labels[t + 1]; the first response target of each row is left out
    expected = torch.tensor([[False, False, True, True, False], [False, True, True, True, True]])
    assert torch.equal(distilled_positions(labels), expected)


def make_module(mode: str = "off_policy") -> AlignDistilTask:
    return AlignDistilTask(
        tiny_llama(0), tiny_llama(1), tiny_llama(2), AlignDistilLoss(), mode=mode, max_new_tokens=6, eos_id=258
    )


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    prompt = torch.randint(0, 256, (2, 4), generator=g)
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # left-padded
    return {
        "chosen_input_ids": ids,
        "chosen_attention_mask": torch.ones_like(ids),
        "chosen_labels": labels,
        "prompt_input_ids": prompt,
        "prompt_attention_mask": prompt_mask,
    }


def test_off_policy_step_trains_only_the_student():
    module = make_module()
    loss = module.training_step(batch(), 0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert any(p.grad is not None for p in module.student.parameters())
    for frozen in (module.teacher, module.second_teacher):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_on_policy_samples_a_response_after_each_prompt_and_masks_the_prompt():
    module = make_module("on_policy")
    torch.manual_seed(0)
    ids, attention, labels = module.sample(batch())
    assert ids.shape[0] == 2 and 4 < ids.shape[1] <= 4 + 6
    assert torch.equal(ids[:, :4], batch()["prompt_input_ids"])
    assert (labels[:, :4] == -100).all() and (labels[:, 4:] != -100).any()
    assert torch.equal(attention[:, :4], batch()["prompt_attention_mask"])
    assert module.student.training  # sampling leaves the student's mode as it found it
    loss = module.training_step(batch(), 0)
    assert torch.isfinite(loss)


def pair_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(0, 256, (3, 9), generator=g)
        labels = ids.clone()
        labels[:, :4] = -100
        out |= {f"{side}_input_ids": ids, f"{side}_attention_mask": torch.ones_like(ids), f"{side}_labels": labels}
    return out


def computed(module: AlignDistilTask, name: str) -> float:
    return float(module.means[name].compute())


def test_reward_metrics_are_relative_to_the_reference_model():
    module = AlignDistilTask(
        tiny_llama(0), tiny_llama(1), tiny_llama(2), AlignDistilLoss(beta=0.1), reference=tiny_llama(0), eos_id=258
    )
    module.evaluate_batch(pair_batch(), 0, "val")
    # the student starts as the reference: its implicit reward is exactly 0, and its accuracies are the reference's
    assert computed(module, "val_student_reward_margin") == 0.0 and computed(module, "val_student_reward_acc") == 0.0
    assert computed(module, "val_student_pref_acc") == computed(module, "val_reference_pref_acc")
    assert computed(module, "val_student_margin") == pytest.approx(computed(module, "val_reference_margin"))
    # the DPO model's reward margin is beta times its log-prob margin minus the reference's
    expected = 0.1 * (computed(module, "val_dpo_margin") - computed(module, "val_reference_margin"))
    assert computed(module, "val_dpo_reward_margin") == pytest.approx(expected, rel=1e-5)
    assert "reference" in module.frozen_names and not any(p.requires_grad for p in module.reference.parameters())


def test_without_a_reference_no_reward_metric_is_updated():
    module = make_module()
    module.evaluate_batch(pair_batch(), 0, "val")
    assert module.means["val_student_reward_acc"].update_count == 0
    assert module.means["val_student_pref_acc"].update_count == 1


@pytest.mark.parametrize("variant", ["adaptive", "fixed", "fixed_adaptive"])
def test_chunked_heads_give_the_loss_and_gradients_of_full_logits(variant):
    """The three models' logits a chunk at a time (no model's head runs as a module) equal whole logits, including
    a sequence with no distilled position and left padding (positions from the attention mask)."""
    data = batch()
    data["chosen_attention_mask"] = data["chosen_attention_mask"].clone()
    data["chosen_attention_mask"][1, :2] = 0  # left padding
    data["chosen_labels"] = data["chosen_labels"].clone()
    data["chosen_labels"][1] = -100  # nothing to distil in the second row
    data["chosen_labels"][1, 2] = 7
    results = {}
    for logits in ("full", "chunked"):
        module = AlignDistilTask(
            tiny_llama(0), tiny_llama(1), tiny_llama(2), AlignDistilLoss(variant=variant), logits=logits, chunk_size=3
        )
        runs = []
        for model in (module.student, module.teacher, module.second_teacher):
            model.lm_head.register_forward_hook(lambda *_, runs=runs: runs.append(1))
        loss = module.training_step(data, 0)
        loss.backward()
        results[logits] = (loss.detach(), [p.grad.clone() for p in module.student.parameters()], len(runs))
    (full, full_grads, full_runs), (chunked, chunked_grads, chunked_runs) = results["full"], results["chunked"]
    assert full_runs == 3 and chunked_runs == 0
    assert torch.allclose(full, chunked, atol=1e-6) and full > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full_grads, chunked_grads, strict=True))
