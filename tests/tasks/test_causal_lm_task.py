"""The causal-LM task: shifted logits reach each term by the names it takes; CE + terms weighted explicitly;
validation sums tokens exactly; the teacher stays frozen."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.models import create_model
from distill.tasks.causal_lm import CausalLMTask, next_token_nll
from losses import SEQUENCE_LOGITS, TOKEN_LOGITS, Consumes, GraphOnLogitsLoss, TokenDivergenceLoss

V = 259


def tiny_llama(seed: int, width: int = 32):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=V, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1)


def batch(seed: int = 0, b: int = 3, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -4:] = 0  # padding at the end of the first row
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[1, :5] = -100  # a prompt: not trained
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class TokenRecorder(torch.nn.Module):
    """A token-logit term (with the epoch) that records what it is given."""

    consumes = Consumes(TOKEN_LOGITS, extra=("epoch",))

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, student_logits, teacher_logits, labels, epoch):
        self.calls.append((student_logits.shape, teacher_logits.shape, labels.clone(), epoch))
        return student_logits.float().mean() * 0


class SequenceRecorder(torch.nn.Module):
    """A sequence-logit term that records the two masks it is given."""

    consumes = Consumes(SEQUENCE_LOGITS)

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def forward(self, student_logits, teacher_logits, student_mask, teacher_mask):
        self.calls.append((student_mask.clone(), teacher_mask.clone()))
        return student_logits.float().mean() * 0


def test_terms_get_shifted_logits_and_the_inputs_of_their_kind():
    tokens, sequences = TokenRecorder(), SequenceRecorder()
    terms = {"tokens": (1.0, tokens), "sequences": (1.0, sequences)}
    module = CausalLMTask(tiny_llama(0), tiny_llama(1, 48), terms=terms)
    data = batch()
    module.training_step(data, 0)
    (s_shape, t_shape, labels, epoch) = tokens.calls[0]
    assert s_shape == (3, 11, V) and t_shape == (3, 11, V)
    assert torch.equal(labels, data["labels"][:, 1:]) and epoch == 1
    (student_mask, teacher_mask) = sequences.calls[0]
    assert torch.equal(student_mask, labels != -100) and torch.equal(teacher_mask, labels != -100)


def test_loss_is_weighted_ce_plus_token_kl_on_shifted_positions():
    student, teacher = tiny_llama(0), tiny_llama(1, 48)
    kl = TokenDivergenceLoss("forward_kl")
    module = CausalLMTask(student, teacher, terms={"token_kl": (0.7, kl)}, ce_weight=0.3)
    data = batch()
    loss = module.training_step(data, 0)
    s = student(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        t = teacher(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits[:, :-1]
    labels = data["labels"][:, 1:]
    ce = F.cross_entropy(s.flatten(0, 1), labels.flatten(), ignore_index=-100)
    expected = 0.3 * ce + 0.7 * kl(s, t, labels)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_gld_gets_both_masks_with_different_tokenizations():
    student, teacher = tiny_llama(0), tiny_llama(1, 48)
    module = CausalLMTask(student, teacher, terms={"gld": (0.01, GraphOnLogitsLoss())})
    data = batch()
    teacher_side = batch(seed=5, t=20)
    data |= {f"teacher_{k}": v for k, v in teacher_side.items()}
    loss = module.training_step(data, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert student.model.embed_tokens.weight.grad is not None


def test_next_token_nll_sums_over_labelled_positions_only():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[1, 2, -100, 3, -100], [-100, -100, -100, -100, -100]])
    nll, count = next_token_nll(logits, labels)
    valid = labels != -100
    manual = -torch.log_softmax(logits, -1)[valid].gather(-1, labels[valid][:, None]).sum()
    assert count == 3 and torch.allclose(nll, manual)
    nll, count = next_token_nll(logits, torch.full((2, 5), -100))
    assert count == 0 and nll == 0  # an all-masked batch: no NaN
