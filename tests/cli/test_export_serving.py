"""`distill export` for serving: a LoRA run's adapters alone as a PEFT folder that PEFT loads onto the base model a
server would load (reproducing the trained student), refused for runs it cannot serve; and the chat template's
end-of-turn token beside eos in the exported `generation_config.json`, or reported as a stop string where the
tokenizer spells it in several tokens."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.data.tokenizers import ByteTokenizer
from distill.engine.pipeline import restore
from distill.engine.run_folder import RunCheckpoint
from tests.helpers import write_recipe
from tests.helpers_lm import lm_recipe, save_chatml_tokenizer, save_tiny_llama, write_chats, write_corpus

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_a_lora_run_exports_its_adapters_for_the_base_a_server_loads(tmp_path, monkeypatch, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    base = save_tiny_llama(tmp_path / "base", ByteTokenizer.vocab_size)
    data = {"source": str(write_corpus(tmp_path / "corpus.jsonl")), "tokenizer": "bytes"}
    student = {"name": f"hf:{base}", "lora": LORA}
    assert main(["fit", "--recipe", str(write_recipe(tmp_path / "lm.yaml", lm_recipe(tmp_path, data, student)))]) == 0
    best = tmp_path / "runs" / "lm" / "version_0" / "checkpoints" / "best.ckpt"
    trained = restore(RunCheckpoint.read(best)).module.student.eval()  # the base with its trained adapters
    ids = torch.tensor([ByteTokenizer().encode("def times_3(x):\n    return x * 3\n")])

    capsys.readouterr()
    assert main(["export", "--checkpoint", str(best), "--out", "adapter", "--adapter-only"]) == 0
    assert "(PEFT adapter folder, float32)" in capsys.readouterr().out
    folder = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["q_proj", "v_proj"])
    weights = load_file(str(folder / "adapter_model.safetensors"))
    assert weights and all("lora_" in key for key in weights)  # the adapters only, no base weight
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), folder)
    bare = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        torch.testing.assert_close(served.eval()(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(bare.eval()(input_ids=ids).logits, expected, atol=1e-3)  # the adapters matter

    # a run without adapters, or whose base exists only in the run, has no adapter-only export: one line, no folder
    for name, spec, reason in [
        ("full", {"name": f"hf:{base}"}, "has none (no student.lora)"),
        ("own", {"name": "llama", "hidden_size": 32, "num_attention_heads": 4, "lora": LORA}, "exists only in the run"),
    ]:
        recipe = lm_recipe(tmp_path, data, spec) | {"run": {"root": str(tmp_path / "runs"), "name": name}}
        assert main(["fit", "--recipe", str(write_recipe(tmp_path / f"{name}.yaml", recipe))]) == 0
        capsys.readouterr()
        checkpoint = tmp_path / "runs" / name / "version_0" / "checkpoints" / "best.ckpt"
        assert main(["export", "--checkpoint", str(checkpoint), "--out", name, "--adapter-only"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("distill: error: export: --adapter-only") and reason in line
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("tokenizer", ["chatml_specials", "bytes"])
def test_generation_stops_at_the_chat_templates_end_of_turn(tokenizer, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer, GenerationConfig

    monkeypatch.chdir(tmp_path)
    if tokenizer == "bytes":  # chat_kd_tiny's: <|im_end|> is ten byte tokens
        data = {"tokenizer": "bytes", "chat_template": "chatml"}
    else:  # Qwen's kind: <|im_end|> is one special token
        data = {"tokenizer": f"hf:{save_chatml_tokenizer(tmp_path / 'tokenizer')}"}
    data |= {"source": str(write_chats(tmp_path / "chats.jsonl")), "packing": False, "seq_len": 128}
    assert main(["fit", "--recipe", str(write_recipe(tmp_path / "chat.yaml", lm_recipe(tmp_path, data)))]) == 0
    best = tmp_path / "runs" / "lm" / "version_0" / "checkpoints" / "best.ckpt"
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(best), "--out", "chat"]) == 0
    out = capsys.readouterr().out

    exported = AutoTokenizer.from_pretrained(str(tmp_path / "chat"))
    generation = GenerationConfig.from_pretrained(str(tmp_path / "chat"))
    config = json.loads((tmp_path / "chat" / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"], config["pad_token_id"]) == (258, 257, 256)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    turn = exported(exported.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    if tokenizer == "bytes":
        assert generation.eos_token_id == 258  # no single id ends a turn
        assert "ends a turn with '<|im_end|>', several tokens of this tokenizer" in out
    else:
        im_end = exported.convert_tokens_to_ids("<|im_end|>")
        assert generation.eos_token_id == [exported.eos_token_id, im_end] == [258, 260]
        assert im_end in turn  # the template's turns do end with it
        assert "stop string" not in out
