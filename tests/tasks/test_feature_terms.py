"""Feature terms (`distill.tasks.feature_terms`): layers checked and shaped on one probe pass, projectors built from
the shapes and trained with the student, language-model layer maps on both logits paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.models import create_model
from distill.tasks.causal_lm import CausalLMTask, token_probe
from distill.tasks.classification import ClassificationTask
from distill.tasks.feature_terms import FeatureTerm, build_feature_terms
from distill.tasks.loss_terms import LOSSES
from losses import HiddenStateLoss
from tests.tasks.test_causal_lm_chunked import llama
from tests.tasks.test_causal_lm_task import batch


def convnets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = create_model("convnet", num_classes=10, in_chans=1, widths=[8, 8], hidden=0)
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[8, 16], hidden=16)
    return student, teacher


def digits_probe(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    model(torch.zeros(2, 1, 8, 8, device=device, dtype=dtype))


def spec(loss: str, student, teacher, **args) -> dict:
    return {"loss": loss, "weight": 1.0, "student": student, "teacher": teacher, **args}


def build(specs: dict, student: nn.Module, teacher: nn.Module, probe=digits_probe, num_samples: int = 100) -> dict:
    return build_feature_terms(specs, LOSSES.get, student, teacher, probe, num_samples)


def test_projectors_are_built_from_the_probed_shapes():
    student, teacher = convnets()
    terms = build(
        {
            "fitnet": spec("fitnet", "features.6", "features.6"),  # (8, 4, 4) -> (16, 4, 4)
            "at": spec("at", ["features.2", "features.6"], ["features.2", "features.6"]),
            "crd": spec("crd", "head.1", "head.1", embed_dim=4, negatives=8),  # (8,) and (16,)
        },
        student,
        teacher,
    )
    fitnet, at, crd = (terms[name][1] for name in ("fitnet", "at", "crd"))
    assert isinstance(fitnet, FeatureTerm) and fitnet.projectors is not None
    x = torch.randn(3, 8, 4, 4)
    assert fitnet.projectors[0](x).shape == (3, 16, 4, 4)
    assert at.projectors is None  # attention maps compare across channel counts: nothing to project
    assert crd.projectors is None and crd.loss.memory_student.shape[0] == 100  # a memory row per training sample


def test_the_probe_moves_no_statistic_and_leaves_no_hook():
    student, teacher = convnets()
    before = {k: v.clone() for k, v in [*student.state_dict().items(), *teacher.state_dict().items()]}
    student.train()
    build({"fitnet": spec("fitnet", "features.6", "features.6")}, student, teacher)
    after = {**student.state_dict(), **teacher.state_dict()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm ran in eval mode
    assert student.training and all(m.training for m in student.modules())  # modes restored
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (
            {"fitnet": spec("fitnet", "head.1", "features.6")},
            "loss.terms.fitnet: student head.1 (8,) cannot be mapped to teacher features.6 (16, 4, 4)",
        ),
        ({"sp": spec("sp", "features.9", "features.6")}, "loss.terms.sp.student: ConvNet has no layer 'features.9'"),
        ({"at": spec("at", "features.6", "head.9")}, "loss.terms.at.teacher: ConvNet has no layer 'head.9'"),
        ({"crd": spec("crd", ["head.1", "head.1"], ["head.1", "head.1"])}, "loss.terms.crd: "),
    ],
)
def test_bad_layers_and_shapes_fail_before_training_in_one_line(specs, message):
    student, teacher = convnets()
    with pytest.raises(DistillError) as error:
        build(specs, student, teacher)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_classification_task_trains_the_projectors_with_the_student():
    student, teacher = convnets()
    terms = build({"fitnet": spec("fitnet", "features.6", "features.6")}, student, teacher)
    module = ClassificationTask(student, teacher, num_classes=10, terms=terms)
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    projector = list(module.terms["fitnet"].projectors.parameters())
    assert projector and {id(p) for p in projector} <= optimized
    assert not {id(p) for p in teacher.parameters()} & optimized
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    loss = module.training_step((x, y), 0)
    loss.backward()
    assert set(module.last_parts) == {"ce", "fitnet"} and module.last_parts["fitnet"] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])  # nothing kept past the step


def lm_step(logits: str) -> tuple[torch.Tensor, CausalLMTask]:
    student, teacher = llama(0), llama(1, 48)
    specs = {"hidden": spec("hidden_state", [0, 1], [0, -1], kind="mse")}
    terms = build(specs, student, teacher, probe=token_probe)
    module = CausalLMTask(student, teacher, terms=terms, ce_weight=0.3, logits=logits, chunk_size=7)
    loss = module.training_step(batch(), 0)
    loss.backward()
    return loss.detach(), module


def test_a_layer_map_of_hidden_states_is_the_same_on_both_logits_paths_and_trains_its_projection():
    full, full_module = lm_step("full")
    chunked, chunked_module = lm_step("chunked")
    torch.testing.assert_close(full, chunked, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_module.last_parts["hidden"], chunked_module.last_parts["hidden"])
    # the value is the loss on the models' own hidden states, projected, at the distilled positions
    data, student, teacher = batch(), full_module.student, full_module.teacher
    with torch.no_grad():
        s = student(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True)
        t = teacher(input_ids=data["input_ids"], attention_mask=data["attention_mask"], output_hidden_states=True)
        term = full_module.terms["hidden"]
        project = [lambda h, p=p: term.project(p, h) for p in term.projectors]  # token by token
        mask = torch.nn.functional.pad(data["labels"][:, 1:] != -100, (0, 1), value=False)
        expected = HiddenStateLoss("mse")(
            [project[0](s.hidden_states[0]), project[1](s.hidden_states[1])],
            [t.hidden_states[0], t.hidden_states[-1]],
            mask,
        )
    torch.testing.assert_close(full_module.last_parts["hidden"], expected)
    assert all(p.grad is not None for p in full_module.terms["hidden"].projectors.parameters())
