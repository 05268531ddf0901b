"""The causal-LM task without [B, T, V] logits: the chunked path equals the full one (loss, gradients, evaluation
sums), the LM heads are never run as modules, and the offline teacher cache trains later runs without the teacher."""

from __future__ import annotations

import pytest
import torch

from distill.config import load_recipe
from distill.errors import DistillError
from distill.models import create_model
from distill.tasks import causal_lm
from distill.tasks.causal_lm import CausalLMTask
from distill.teachers.token_cache import TokenTeacherCache
from losses import GraphOnLogitsLoss, TokenDivergenceLoss, token_divergence
from tests.tasks.test_causal_lm_task import TokenRecorder, batch

TOKENIZER_V, PADDED_V = 259, 320  # byte tokenizer entries; head rows, padded as real models pad them


def llama(seed: int, width: int = 32):
    torch.manual_seed(seed)
    return create_model(
        "llama",
        vocab_size=TOKENIZER_V,
        padded_vocab_size=PADDED_V,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=1,
    )


def terms() -> dict:
    return {
        "kl": (0.7, TokenDivergenceLoss("forward_kl", chunk_size=5)),
        "jsd": (0.4, TokenDivergenceLoss("jsd", beta=0.3)),
    }


def step(
    logits: str, terms_of: dict, data: dict, teacher_calls: list | None = None, **kwargs
) -> tuple[torch.Tensor, dict[str, torch.Tensor], CausalLMTask]:
    student, teacher = llama(0), llama(1, 48)
    module = CausalLMTask(student, teacher, terms=terms_of, ce_weight=0.3, logits=logits, chunk_size=7, **kwargs)
    if teacher_calls is not None:  # the teacher's backbone runs whether its logits are chunked or not
        teacher.model.register_forward_hook(lambda *_: teacher_calls.append(1))
    loss = module.training_step(data, 0)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    return loss.detach(), grads, module


def assert_same(a: tuple, b: tuple, atol: float = 1e-5) -> None:
    assert torch.allclose(a[0], b[0], atol=atol), (a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert torch.allclose(a[1][name], b[1][name], atol=atol), name


def head_calls(module: CausalLMTask) -> list[str]:
    """Records which LM heads run as modules (a module call builds that model's full logits)."""
    calls: list[str] = []
    for role in ("student", "teacher"):
        getattr(module, role).lm_head.register_forward_hook(lambda *_, role=role: calls.append(role))
    return calls


def test_chunked_ce_and_token_terms_equal_the_full_logits_path():
    data = batch()
    full = step("full", terms(), data)
    chunked = step("chunked", terms(), data)
    assert_same(full[:2], chunked[:2])
    assert full[2].last_parts.keys() == chunked[2].last_parts.keys() == {"ce", "kl", "jsd"}
    for name in ("ce", "kl", "jsd"):
        assert torch.allclose(full[2].last_parts[name], chunked[2].last_parts[name], atol=1e-5)


def test_chunked_gld_with_two_tokenizations_equals_the_full_path():
    data = batch() | {f"teacher_{k}": v for k, v in batch(seed=5, t=20).items()}
    gld = lambda: {"gld": (0.05, GraphOnLogitsLoss(top_k=6))}  # noqa: E731
    assert_same(step("full", gld(), data)[:2], step("chunked", gld(), data)[:2])


def test_neither_model_runs_its_head_as_a_module_when_chunked():
    module = CausalLMTask(llama(0), llama(1, 48), terms=terms(), logits="auto")
    calls = head_calls(module)
    module.training_step(batch(), 0).backward()
    module.evaluate_batch(batch(), 0, "val")
    assert calls == []
    full = CausalLMTask(llama(0), llama(1, 48), terms=terms(), logits="full")
    full_calls = head_calls(full)
    full.training_step(batch(), 0)
    assert sorted(full_calls) == ["student", "teacher"]


def test_evaluation_sums_are_the_same_chunked_and_full():
    sums = {}
    for logits in ("full", "chunked"):
        module = CausalLMTask(llama(0), llama(1, 48), terms=terms(), logits=logits, chunk_size=4)
        module.evaluate_batch(batch(), 0, "val")
        sums[logits] = {
            what: module.sums[f"val_{what}"].compute() for what in ("nll", "tokens", "kl", "agree", "teacher_nll")
        }
    for what, value in sums["full"].items():
        assert torch.allclose(value, sums["chunked"][what], atol=1e-4), what


def test_auto_falls_back_to_full_logits_for_a_term_without_a_row_form_and_chunked_refuses_it():
    module = CausalLMTask(llama(0), llama(1, 48), terms={"rec": (1.0, TokenRecorder())}, logits="auto")
    assert not module.student_chunked()
    module.training_step(batch(), 0)  # the recorder got full logits
    with pytest.raises(DistillError, match="causal_lm.logits: chunked cannot run here: TokenRecorder has no row form"):
        CausalLMTask(llama(0), llama(1, 48), terms={"rec": (1.0, TokenRecorder())}, logits="chunked")


def cache(tmp_path, top_k: int | None) -> TokenTeacherCache:
    data = batch()
    return TokenTeacherCache(
        tmp_path / "cache",
        {"teacher": "t"},
        {"train": 8, "val": 8},
        data["input_ids"].shape[1] - 1,
        PADDED_V,
        top_k,
        shard_rows=3,
    )


def cached_step(tmp_path, top_k: int | None, terms_of: dict, teacher_runs: bool):
    """One training step of a new run on a cache in `tmp_path`; whether the teacher ran is checked."""
    data = batch() | {"index": torch.tensor([6, 1, 4])}  # rows in two shards
    calls: list = []
    loss, grads, _ = step("auto", terms_of, data, teacher_calls=calls, teacher_cache=cache(tmp_path, top_k))
    assert (calls != []) is teacher_runs
    return loss, grads


def test_a_cache_of_every_entry_trains_exactly_as_the_teacher_and_later_runs_never_run_it(tmp_path):
    data = batch()
    online = step("auto", terms(), data)
    first = cached_step(tmp_path, None, terms(), teacher_runs=True)  # the first run stores the teacher's rows
    assert_same(online[:2], first)
    again = cached_step(tmp_path, None, terms(), teacher_runs=False)  # a new run reads the stored rows
    assert_same(first, again, atol=0)


def test_a_top_k_cache_keeps_gld_exact_and_the_divergence_close(tmp_path):
    data = batch()
    gld = lambda: {"gld": (0.05, GraphOnLogitsLoss(top_k=6)), "kl": (0.7, TokenDivergenceLoss())}  # noqa: E731
    online = step("auto", gld(), data)
    cached = cached_step(tmp_path, 16, gld(), teacher_runs=True)
    assert torch.isfinite(cached[0]) and abs(cached[0] - online[0]) < 0.05 * online[0]
    only_gld = {"gld": (1.0, GraphOnLogitsLoss(top_k=6))}
    assert_same(step("auto", only_gld, data)[:2], cached_step(tmp_path / "g", 16, only_gld, teacher_runs=True))


def test_the_cache_refuses_another_setup(tmp_path):
    cache(tmp_path, 16)
    with pytest.raises(DistillError, match="differs in: top_k"):
        cache(tmp_path, 8)


def test_a_term_that_needs_full_teacher_logits_is_refused_with_the_cache(tmp_path):
    with pytest.raises(DistillError, match="teacher.cache: loss term rec needs the teacher's full logits"):
        CausalLMTask(llama(0), llama(1, 48), terms={"rec": (1.0, TokenRecorder())}, teacher_cache=cache(tmp_path, 8))


def test_one_chunk_size_runs_both_paths_and_a_terms_own_size_becomes_the_tasks(monkeypatch):
    seen = []
    full, fused = token_divergence.masked_sum_and_count, causal_lm.fused_masked_sum_and_count
    monkeypatch.setattr(token_divergence, "masked_sum_and_count", lambda *a: seen.append(("full", a[-1])) or full(*a))
    monkeypatch.setattr(
        causal_lm, "fused_masked_sum_and_count", lambda *a: seen.append(("chunked", a[-1])) or fused(*a)
    )
    for logits in ("full", "chunked"):  # the task's chunk_size is 7 (`step`); the term was built without one
        step(logits, {"kl": (1.0, TokenDivergenceLoss("forward_kl"))}, batch())
    assert seen == [("full", 7), ("chunked", 7)]  # before, the full path ran the term in one chunk of every token

    own = load_recipe("llm_kd_tiny", ["loss.terms.token_kl.chunk_size=9"])
    assert causal_lm.chunk_size(own.recipe, own.settings) == 9  # a term's own size is honoured, not ignored
    given = load_recipe("llm_kd_tiny", ["causal_lm.chunk_size=9"])
    assert causal_lm.chunk_size(given.recipe, given.settings) == 9
    with pytest.raises(DistillError, match=r"'loss.terms.token_kl.chunk_size' differs: .*set causal_lm.chunk_size"):
        load_recipe("llm_kd_tiny", ["loss.terms.token_kl.chunk_size=9", "causal_lm.chunk_size=5"])
