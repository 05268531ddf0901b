"""`distill export`: a language-model student (LoRA merged) as a Hugging Face folder that `from_pretrained` loads
with the run's tokenizer, an image student as safetensors with its architecture, each equal to the run's student
when read back; the run's tokenizers exported exactly; a non-empty target refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.data.tokenizers import ByteTokenizer, bpe_tokenizer
from distill.engine.pipeline import restore
from distill.engine.run_folder import RunCheckpoint
from distill.export.tokenizer_files import hf_tokenizer
from distill.models import create_model
from tests.cli.test_llm_recipes import TINY
from tests.helpers import tiny_recipe, write_recipe

TEXT = "Return the sum of x and y. Ünïcödé ✓ — tabs\tand\nnewlines"


def test_a_lora_language_model_exports_merged_with_its_tokenizer(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    lora = "student.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"
    assert main(["fit", "--recipe", "llm_kd_tiny", *TINY, lora]) == 0
    best = tmp_path / "runs" / "llm_kd_tiny" / "version_0" / "checkpoints" / "best.ckpt"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(best), "--out", "exported"]) == 0
    out = capsys.readouterr().out
    assert "read back and compared with the run's student on probe inputs" in out
    folder = tmp_path / "exported"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    weights = load_file(str(folder / "model.safetensors"))
    assert not any("lora" in key for key in weights)  # merged into the base weights

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == ByteTokenizer().encode(TEXT)
    student = restore(RunCheckpoint.read(best)).module.student.eval()  # with its adapters
    ids = torch.tensor([ByteTokenizer().encode("def add(x, y):")])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, student(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_an_image_student_exports_as_safetensors_with_its_architecture(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path / "runs", tmp_path / "teachers", teacher=None)
    recipe["loss"] = {"ce_weight": 1.0, "terms": {}}
    recipe["trainer"]["max_epochs"] = 1
    assert main(["fit", "--recipe", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    best = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    (tmp_path / "out").mkdir()  # an empty folder is fine
    assert main(["export", "--checkpoint", str(best), "--out", "out"]) == 0
    described = json.loads((tmp_path / "out" / "distill_model.json").read_text())
    assert described == {
        "model": {"name": "convnet", "widths": [8, 8], "hidden": 0, "dropout": 0.0},  # defaults resolved
        "data_args": {"num_classes": 10, "in_chans": 1},
    }
    model = create_model("convnet", num_classes=10, in_chans=1, widths=[8, 8], hidden=0).eval()
    model.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")))  # the model's own names
    restored = restore(RunCheckpoint.read(best))
    images = torch.stack([restored.data.val_set[i][0] for i in range(4)])
    student = restored.module.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), student(images))

    capsys.readouterr()
    assert main(["export", "--checkpoint", str(best), "--out", "out"]) == 2  # now it holds an export
    assert capsys.readouterr().err.strip().splitlines() == [
        "distill: error: export: out exists and is not empty; give a new folder"
    ]
    assert (tmp_path / "out" / "model.safetensors").is_file()

    # float16 weights (integer buffers as they are), read back within float16's tolerance
    assert main(["export", "--checkpoint", str(best), "--out", "half", "--dtype", "float16"]) == 0
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {v.dtype for v in half.values() if v.is_floating_point()} == {torch.float16}
    model.load_state_dict(half)
    with torch.no_grad():
        torch.testing.assert_close(model.half()(images.half()).float(), student(images), rtol=0, atol=2e-2)

    # a checkpoint written before runs kept their data record still exports, reading the data again
    saved = torch.load(best, weights_only=True)
    del saved["distill"]["data_record"]
    torch.save(saved, tmp_path / "old.ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "old.ckpt"), "--out", "old"]) == 0
    assert load_file(str(tmp_path / "old" / "model.safetensors")).keys() == half.keys()


def test_projectors_train_in_the_run_and_stay_out_of_the_export(tmp_path, teacher_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path / "runs", teacher_store)
    recipe["loss"]["terms"]["fitnet"] = {"weight": 1.0, "student": "features.6", "teacher": "features.6"}
    recipe["trainer"]["max_epochs"] = 1
    assert main(["fit", "--recipe", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    best = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "best.ckpt"
    saved = torch.load(best, weights_only=True)["state_dict"]
    assert any(key.startswith("terms.fitnet.projectors.") for key in saved)  # the regressor resumes with the run
    assert main(["export", "--checkpoint", str(best), "--out", "out"]) == 0
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    student = {key.removeprefix("student."): value for key, value in saved.items() if key.startswith("student.")}
    assert exported.keys() == student.keys()  # the student's own weights, no projector
    assert all(torch.equal(exported[key], student[key]) for key in student)


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_the_runs_tokenizers_export_exactly(tmp_path, kind):
    texts = [TEXT, "the quick brown fox jumps over the lazy dog"] * 20
    ours = ByteTokenizer() if kind == "bytes" else bpe_tokenizer(320, texts, tmp_path)
    exported = hf_tokenizer(ours, "chatml")
    exported.save_pretrained(str(tmp_path / "tok"))
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in (TEXT, "fox and dog", ""):
        assert loaded(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (ours.pad_id, ours.bos_id, ours.eos_id)
    assert loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n"
    )


def test_a_draft_exports_in_the_eagle_layout_and_decodes_as_in_the_run(tmp_path, monkeypatch, capsys):
    from distill.export.eagle import load_eagle
    from distill.generate.speculative import evaluate_speculative
    from tests.cli.test_evaluate_tasks import DRAFT

    monkeypatch.chdir(tmp_path)
    eagle = ["student.input_norm=false", "student.fuse_bias=false", "trainer.limit_train_batches=20"]
    eagle += ["speculative.top_k=3", "speculative.total_tokens=10"]  # verified with the run's tree, as it is served
    assert main(["fit", "--recipe", "specvlm_draft_tiny", *DRAFT, *eagle]) == 0
    best = tmp_path / "runs" / "specvlm_draft_tiny" / "version_0" / "checkpoints" / "best.ckpt"
    capsys.readouterr()
    with monkeypatch.context() as patched:  # the draft is exported with its target, never with the data
        patched.setattr("distill.engine.wiring.prepare_data", lambda loaded: pytest.fail("the export read the data"))
        assert main(["export", "--checkpoint", str(best), "--out", "draft"]) == 0
    assert "as in the run, lossless on 100%" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "draft" / "model.safetensors"))
    assert sorted(weights) == [
        "fc.weight",
        "layers.0.mlp.down_proj.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight",
        "layers.0.post_attention_layernorm.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.o_proj.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.v_proj.weight",
    ]
    config = json.loads((tmp_path / "draft" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["bias"] is False and config["hidden_size"] == 128
    # independently: the reloaded draft drafts what the run's draft drafts, and decoding stays lossless
    restored = restore(RunCheckpoint.read(best))
    task = restored.module
    prompts = task.held_out_prompts(restored.data)
    assert task.decoding["top_k"] == 3 and task.decoding["total_tokens"] == 10
    run = evaluate_speculative(task.teacher, task.student.eval(), prompts, **task.decoding)
    reloaded = evaluate_speculative(task.teacher, load_eagle(tmp_path / "draft"), prompts, **task.decoding)
    assert reloaded.lossless == run.lossless == 1.0 and reloaded.accepted_length == run.accepted_length > 1.0

    # a draft with a norm before its layer has no EAGLE form: one line, nothing written
    assert main(["fit", "--recipe", "specvlm_draft_tiny", *DRAFT]) == 0
    capsys.readouterr()
    other = tmp_path / "runs" / "specvlm_draft_tiny" / "version_1" / "checkpoints" / "best.ckpt"
    assert main(["export", "--checkpoint", str(other), "--out", "normed"]) == 2
    assert "the EAGLE layout has no norm before the draft's layer" in capsys.readouterr().err
    assert not (tmp_path / "normed").exists()

    # without its target a draft has no export, and the error says the target is what is missing
    target = Path(RunCheckpoint.read(best).sources["teacher"]["weights"])
    target.unlink()
    assert main(["export", "--checkpoint", str(best), "--out", "orphan"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "a draft is exported for its target" in line and f"the target's weights are gone ({target})" in line
    assert not (tmp_path / "orphan").exists()


def test_a_head_read_beside_frozen_models_has_no_export_of_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {}, "distill": {"recipe": {"task": "amu"}, "sources": {}}}, tmp_path / "amu.ckpt")
    assert main(["export", "--checkpoint", "amu.ckpt", "--out", "head"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line.startswith("distill: error: export: task amu's student is a logit bias")
        and not (tmp_path / "head").exists()
    )
