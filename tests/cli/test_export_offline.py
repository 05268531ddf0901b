"""`distill export` builds the student from its checkpoint alone: a finished run exports after its folder moved,
with its data files, its trained tokenizer's cache and its teacher's weights deleted, and with a recipe that names a
Hub dataset (offline) and an int8 teacher (no GPU here), while validating the same checkpoint, which rebuilds the
whole run, fails. The export reproduces the trained student's logits, in float32 and in bfloat16."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.engine.pipeline import restore
from distill.engine.run_folder import RunCheckpoint
from distill.export import relative_tolerance
from distill.models import create_model
from tests.helpers import write_recipe
from tests.helpers_lm import TINY_LLAMA, lm_recipe, write_corpus

VOCAB = 300  # bpe:300, trained on the run's corpus: the student's size depends on the data


def test_a_finished_run_exports_without_its_data_or_teacher(tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    corpus = write_corpus(tmp_path / "data" / "corpus.jsonl")
    teacher_file = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(create_model("llama", vocab_size=VOCAB, **TINY_LLAMA).state_dict(), teacher_file)
    data = {"source": str(corpus), "tokenizer": f"bpe:{VOCAB}", "tokenizer_cache": str(tmp_path / "tokenizers")}
    teacher = {"model": {"name": "llama", **TINY_LLAMA}, "checkpoint": str(teacher_file)}
    recipe = write_recipe(tmp_path / "lm.yaml", lm_recipe(tmp_path, data, teacher=teacher))
    assert main(["fit", "--recipe", str(recipe)]) == 0
    run = tmp_path / "runs" / "lm" / "version_0"
    restored = restore(RunCheckpoint.read(run / "checkpoints" / "best.ckpt"))  # the whole run, while it can be
    student, tokenizer = restored.module.student.eval(), restored.data.tokenizer
    ids = torch.tensor([tokenizer.encode("def times_7(x):\n    return x * 7\n")])
    with torch.no_grad():
        trained = student(input_ids=ids).logits

    # everything but the checkpoint goes away; the recipe it records is one from a GPU machine with Hub data
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    shutil.rmtree(tmp_path / "data")
    shutil.rmtree(tmp_path / "tokenizers")
    teacher_file.unlink()
    best = moved / "checkpoints" / "best.ckpt"
    saved = torch.load(best, weights_only=True)
    saved["distill"]["recipe"]["data"]["source"] = "hf:HuggingFaceH4/ultrachat_200k"
    saved["distill"]["recipe"]["teacher"].update(model={"name": "hf:Qwen/Qwen2.5-1.5B-Instruct"}, dtype="int8")
    torch.save(saved, best)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not torch.cuda.is_available()
    capsys.readouterr()
    assert main(["validate", "--checkpoint", str(best)]) == 2  # rebuilding the run needs what is gone
    assert "teacher: the weights the student" in capsys.readouterr().err

    assert main(["export", "--checkpoint", str(best), "--out", "exported"]) == 0
    assert "(Hugging Face folder, float32)" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
    text = "def times_12(x): ✓"
    exported_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "exported"))
    assert exported_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["eos_token_id"] == tokenizer.eos_id

    # bfloat16 weights, read back in bfloat16 within that dtype's tolerance
    assert main(["export", "--checkpoint", str(best), "--out", "half", "--dtype", "bfloat16"]) == 0
    assert "(Hugging Face folder, bfloat16)" in capsys.readouterr().out
    weights = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"  # transformers 5 names it dtype
    half = AutoModelForCausalLM.from_pretrained(str(tmp_path / "half")).eval()
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        difference = (half(input_ids=ids).logits.float() - trained).abs().max()
    assert 0 < difference <= relative_tolerance(torch.bfloat16, 1e-4) * max(1.0, float(trained.abs().max()))
