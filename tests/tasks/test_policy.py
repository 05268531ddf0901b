"""Whose responses causal_lm trains on: on-policy batches carry the student's own samples after the data's prompts
(labelled on the samples only), seeded so they repeat exactly; mixed batches follow GKD's lambda; sequence-level KD
generates the teacher's responses once and reads them back; two tokenizers get the same response text; data
without prompts and a teacher cache beside generated responses are refused."""

from __future__ import annotations

import pytest
import torch

from distill.data.text_rows import IGNORE
from distill.data.tokenizers import ByteTokenizer, bpe_tokenizer
from distill.errors import DistillError
from distill.models import create_model
from distill.tasks import policy as policy_module
from distill.tasks.causal_lm import CausalLMTask
from distill.tasks.policy import (
    ResponsePolicy,
    SamplingSettings,
    Tokenizers,
    check_prompts,
    generate,
    prompts,
    uses_student_samples,
    with_responses,
)
from distill.teachers.response_store import ResponseStore
from losses import TokenDivergenceLoss

BYTES = ByteTokenizer()
SAMPLING = SamplingSettings(max_new_tokens=6, temperature=1.0)


def tiny_llama(seed: int, width: int = 32):
    torch.manual_seed(seed)
    return create_model("llama", vocab_size=259, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1)


def pair_batch(length: int = 24) -> dict[str, torch.Tensor]:
    """Rows `bos prompt response eos` right-padded, labelled on the response; prompts of different lengths."""
    rows = [("sum of ", "x and y"), ("the longer prompt: ", "yes")]
    ids = torch.full((2, length), BYTES.pad_id)
    labels = torch.full((2, length), IGNORE)
    mask = torch.zeros((2, length), dtype=torch.long)
    for i, (prompt, response) in enumerate(rows):
        head = [BYTES.bos_id, *BYTES.encode(prompt)]
        tail = [*BYTES.encode(response), BYTES.eos_id]
        ids[i, : len(head) + len(tail)] = torch.tensor(head + tail)
        labels[i, len(head) : len(head) + len(tail)] = torch.tensor(tail)
        mask[i, : len(head) + len(tail)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.tensor([3, 7])}


def test_on_policy_batches_train_on_the_students_seeded_samples():
    batch = pair_batch()
    policy = ResponsePolicy("on_policy", 1.0, SAMPLING, Tokenizers(BYTES, BYTES), seed=0)
    student = tiny_llama(0)
    first = policy.batch(batch, 4, 1, student, None)
    again = policy.batch(batch, 4, 1, student, None)
    other = policy.batch(batch, 5, 1, student, None)
    assert torch.equal(first["input_ids"], again["input_ids"])  # (seed, epoch, batch) fixes the samples
    assert not torch.equal(first["input_ids"], other["input_ids"])
    for row, prompt in enumerate(prompts(batch)):
        assert first["input_ids"][row, : len(prompt)].tolist() == prompt  # the data's prompt is kept
        labelled = (first["labels"][row] != IGNORE).nonzero().flatten()
        assert int(labelled[0]) == len(prompt) and 1 <= len(labelled) <= SAMPLING.max_new_tokens
        assert torch.equal(first["labels"][row, labelled], first["input_ids"][row, labelled])
    assert torch.equal(first["index"], batch["index"])


def test_sampling_leaves_the_training_random_stream_alone():
    model = tiny_llama(0)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    generate(model, [[1, 2, 3]], SAMPLING, BYTES.pad_id, BYTES.eos_id, seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_mixed_batches_follow_the_fraction_and_repeat():
    drawn = [uses_student_samples("mixed", 0.3, 0, 2, b) for b in range(2000)]
    assert 0.27 < sum(drawn) / len(drawn) < 0.33
    assert drawn == [uses_student_samples("mixed", 0.3, 0, 2, b) for b in range(2000)]
    assert not any(uses_student_samples("off_policy", 1.0, 0, 0, b) for b in range(10))


def test_a_training_step_on_policy_reads_the_sampled_rows():
    seen: list[torch.Tensor] = []
    student, teacher = tiny_llama(0), tiny_llama(1, 48)
    policy = ResponsePolicy("on_policy", 1.0, SAMPLING, Tokenizers(BYTES, BYTES), seed=0)
    task = CausalLMTask(student, teacher, {"kl": (1.0, TokenDivergenceLoss("reverse_kl"))}, 0.0, policy=policy)
    run = task.run_student
    task.run_student = lambda batch: seen.append(batch["labels"]) or run(batch)
    loss = task.training_step(pair_batch(), 0)
    loss.backward()
    assert torch.isfinite(loss) and not torch.equal(seen[0], pair_batch()["labels"])
    assert any(p.grad is not None for p in student.parameters())


def test_sequence_level_kd_generates_the_teachers_responses_once(tmp_path, monkeypatch):
    store = ResponseStore(tmp_path / "responses", {"teacher": "t"}, rows=10, max_tokens=6)
    policy = ResponsePolicy("sequence", 0.0, SAMPLING, Tokenizers(BYTES, BYTES), seed=0, store=store)
    calls = []
    real = policy_module.generate
    monkeypatch.setattr(policy_module, "generate", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    teacher = tiny_llama(1, 48)
    first = policy.batch(pair_batch(), 0, 0, tiny_llama(0), teacher)
    assert calls == [teacher]  # the teacher wrote them
    store.flush()
    reopened = ResponseStore(tmp_path / "responses", {"teacher": "t"}, rows=10, max_tokens=6)
    later = ResponsePolicy("sequence", 0.0, SAMPLING, Tokenizers(BYTES, BYTES), seed=0, store=reopened)
    again = later.batch(pair_batch(), 9, 3, tiny_llama(0), None)  # no teacher needed once stored
    assert calls == [teacher] and torch.equal(first["input_ids"], again["input_ids"])
    with pytest.raises(DistillError, match="another setup"):
        ResponseStore(tmp_path / "responses", {"teacher": "other"}, rows=10, max_tokens=6)


def test_two_tokenizers_read_the_same_response_text(tmp_path):
    bpe = bpe_tokenizer(300, ["x and y, sum of the longer prompt: yes"] * 10, tmp_path)
    batch = pair_batch()
    teacher_rows = [[bpe.bos_id, *bpe.encode(p), *bpe.encode(r), bpe.eos_id] for p, r in (("sum of ", "x and y"),) * 2]
    width = 20
    batch["teacher_input_ids"] = torch.full((2, width), bpe.pad_id)
    batch["teacher_labels"] = torch.full((2, width), IGNORE)
    batch["teacher_attention_mask"] = torch.zeros((2, width), dtype=torch.long)
    for i, row in enumerate(teacher_rows):
        batch["teacher_input_ids"][i, : len(row)] = torch.tensor(row)
        batch["teacher_attention_mask"][i, : len(row)] = 1
        start = 1 + len(bpe.encode("sum of "))
        batch["teacher_labels"][i, start : len(row)] = torch.tensor(row[start:])
    response = [*BYTES.encode("ok then"), BYTES.eos_id]
    out = with_responses(batch, [response, response], "student", Tokenizers(BYTES, bpe))
    labelled = out["teacher_input_ids"][0][out["teacher_labels"][0] != IGNORE].tolist()
    assert labelled == [*bpe.encode("ok then"), bpe.eos_id]
    assert out["teacher_input_ids"][0, :start].tolist() == teacher_rows[0][:start]


def test_rows_without_prompts_are_refused():
    labels = torch.tensor([[5, 6, 7], [IGNORE, 6, 7]])
    with pytest.raises(DistillError, match="1 training rows have none"):
        check_prompts(labels, "on_policy")


def test_modes_run_end_to_end_repeat_exactly_and_sequence_responses_are_reused(tmp_path, monkeypatch, capsys):
    import json

    from distill.cli import main
    from tests.cli.test_llm_recipes import TINY
    from tests.tasks.test_step_tokens import pairs_file

    monkeypatch.chdir(tmp_path)
    pairs = ["data.source=" + str(pairs_file(tmp_path)), "data.packing=false", "data.seq_len=64"]
    sampling = ["causal_lm.sampling.max_new_tokens=8"]
    common = [*TINY, *pairs, *sampling, "teacher.train.data.source=python_stdlib"]
    results = []
    for mode in ("mixed", "mixed", "sequence", "sequence"):
        extra = ["causal_lm.responses=responses"] if mode == "sequence" else []
        assert main(["fit", "--recipe", "llm_kd_tiny", *common, f"causal_lm.mode={mode}", *extra]) == 0
        run = sorted((tmp_path / "runs" / "llm_kd_tiny").iterdir())[-1]
        results.append(json.loads((run / "results.json").read_text())["test"])
    assert results[0] == results[1]  # sampled batches repeat exactly
    assert results[2] == results[3]  # the second run read the stored teacher responses
    assert json.loads((tmp_path / "responses" / "meta.json").read_text())["sampling"]["max_new_tokens"] == 8
    capsys.readouterr()
    assert main(["fit", "--recipe", "llm_kd_tiny", *common, "causal_lm.mode=on_policy", "teacher.cache=c"]) == 2
    assert "'teacher.cache' stores the teacher's outputs on the data's responses" in capsys.readouterr().err


def test_a_stopped_mixed_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch):
    from distill.cli import main
    from distill.config.load import load_recipe
    from distill.engine.pipeline import fit
    from tests.cli.test_llm_recipes import TINY
    from tests.test_resume import StopAfterEpochs

    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "trainer.max_epochs=2", "causal_lm.sampling.max_new_tokens=8"]
    full = fit(load_recipe("gkd_tiny", [*overrides, "run.name=full"]))
    stopped = fit(load_recipe("gkd_tiny", [*overrides, "run.name=stopped"]), callbacks=[StopAfterEpochs(1)])
    assert main(["fit", "--resume", str(stopped.run_dir)]) == 0
    final, resumed = (torch.load(r.run_dir / "checkpoints" / "last.ckpt", weights_only=True) for r in (full, stopped))
    assert resumed["global_step"] == final["global_step"] == 6
    for key, value in final["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key  # the same samples in the same batches
