"""Hugging Face students keep fp32 master weights whatever dtype their checkpoint was saved in; frozen models keep
their own dtype; gradient checkpointing and the attention kernel are recipe keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main
from distill.config import load_recipe, locate
from distill.engine.pipeline import assemble
from distill.engine.wiring import prepare_data
from distill.errors import DistillError
from distill.models.causal_lm import llama

# a Hub-style model as every Qwen and Llama release ships it: saved in bf16, read by `hf:<folder>`
TINY = dict(
    vocab_size=259,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)
BUDGET = [
    "data.max_documents=40",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "teacher.train=null",
]


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bf16_llama")
    torch.manual_seed(0)
    model = llama(**TINY).to(torch.bfloat16)
    model.save_pretrained(folder)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    return folder


def hf_recipe_file(folder: Path, tmp_path: Path) -> Path:
    """llm_kd_tiny with both models read from `folder`: a user's recipe file."""
    recipe = yaml.safe_load(locate("llm_kd_tiny").read_text())
    recipe["student"] = {"name": f"hf:{folder}"}
    recipe["teacher"] = {"model": {"name": f"hf:{folder}"}}
    recipe["run"] = {"root": str(tmp_path / "runs"), "name": "hf"}
    path = tmp_path / "hf_kd.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def hf_recipe(folder: Path, *extra: str, tmp_path: Path):
    return load_recipe(str(hf_recipe_file(folder, tmp_path)), [*BUDGET[:-1], *extra])


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_a_bf16_checkpoint_loads_as_an_fp32_student_beside_a_bf16_teacher(bf16_folder, tmp_path):
    loaded = hf_recipe(bf16_folder, tmp_path=tmp_path)
    assert loaded.resolved["student"]["dtype"] == "float32"  # printed with the recipe: no hidden default
    assert "dtype" not in loaded.resolved["teacher"]["model"]  # frozen models load as saved
    task = assemble(loaded, prepare_data(loaded), training=True)
    assert dtypes(task.student) == {torch.float32}
    assert dtypes(task.teacher) == {torch.bfloat16}


def test_the_student_dtype_and_the_teacher_dtype_are_recipe_keys(bf16_folder, tmp_path):
    loaded = hf_recipe(bf16_folder, "student.dtype=bfloat16", "teacher.dtype=float32", tmp_path=tmp_path)
    task = assemble(loaded, prepare_data(loaded), training=True)
    assert dtypes(task.student) == {torch.bfloat16}
    assert dtypes(task.teacher) == {torch.float32}


def test_small_adamw_updates_survive_in_the_fp32_student(bf16_folder, tmp_path, monkeypatch):
    """What fp32 master weights are for: AdamW at a fine-tuning learning rate moves each weight by about lr, far
    below bf16's resolution (1/256 of the weight), so a pure-bf16 student keeps most weights exactly as they were."""
    monkeypatch.chdir(tmp_path)
    from safetensors.torch import load_file

    initial = {k: v.float() for k, v in load_file(bf16_folder / "model.safetensors").items()}

    def changed_fraction(run: Path) -> float:
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        weights = {k.removeprefix("student."): v for k, v in state.items() if k.endswith("proj.weight")}
        assert weights and {v.dtype for v in weights.values()} == {
            torch.float32 if "fp32" in run.parent.name else torch.bfloat16
        }
        moved = sum(int((v.float() != initial[k]).sum()) for k, v in weights.items())
        return moved / sum(v.numel() for v in weights.values())

    recipe = str(hf_recipe_file(bf16_folder, tmp_path))
    common = [*BUDGET[:-1], "optimizer.lr=2e-5", "scheduler.warmup_epochs=0", "trainer.precision=bf16-mixed"]
    assert main(["fit", "--recipe", recipe, *common, "run.name=fp32"]) == 0
    assert main(["fit", "--recipe", recipe, *common, "student.dtype=bfloat16", "run.name=bf16"]) == 0
    fp32, bf16 = changed_fraction(tmp_path / "runs/fp32/version_0"), changed_fraction(tmp_path / "runs/bf16/version_0")
    assert fp32 > 0.95, fp32  # nearly every weight moved
    assert bf16 < 0.5, bf16  # in bf16 most updates round away


def test_lora_adapters_stay_fp32_over_a_bf16_base(bf16_folder, tmp_path):
    loaded = hf_recipe(
        bf16_folder,
        "student.dtype=bfloat16",
        "student.lora={r: 4, target_modules: [q_proj, v_proj]}",
        tmp_path=tmp_path,
    )
    task = assemble(loaded, prepare_data(loaded), training=True)
    trainable = {n: p.dtype for n, p in task.student.named_parameters() if p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32}
    assert all("lora_" in n for n in trainable)
    frozen = {p.dtype for p in task.student.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


@pytest.mark.parametrize(
    "override, message",
    [
        ("student.dtype=float64", "'student.dtype' must be one of float32, bfloat16, float16, auto, got 'float64'"),
        ("student.torch_dtype=bfloat16", "'student.torch_dtype' is called dtype in transformers 5: write dtype"),
        ("teacher.model.gradient_checkpointing=true", "'teacher.model.gradient_checkpointing' applies to the student"),
        ("teacher.model.dtype=bfloat16", "'teacher.model.dtype' a frozen model's precision is teacher.dtype"),
    ],
)
def test_bad_precision_and_checkpointing_keys_are_refused(bf16_folder, tmp_path, override, message):
    with pytest.raises(DistillError) as error:
        hf_recipe(bf16_folder, override, tmp_path=tmp_path)
    assert message in str(error.value)


def layer_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    # a pre-hook: the recomputation stops early, once the last saved tensor it needs is made again
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(tmp_path):
    loaded = load_recipe(
        "llm_kd_tiny", [*BUDGET[:-1], "student.gradient_checkpointing=true", f"run.root={tmp_path / 'runs'}"]
    )
    assert loaded.resolved["student"]["gradient_checkpointing"] is True
    data = prepare_data(loaded)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    plain = load_recipe("llm_kd_tiny", [*BUDGET[:-1], f"run.root={tmp_path / 'runs'}"])
    assert "gradient_checkpointing" not in plain.resolved["student"]  # absent unless asked for: store keys unchanged

    from distill.models import model_for_data

    grads, counts = [], []
    for spec in (loaded.recipe.student, plain.recipe.student):
        torch.manual_seed(0)
        model = model_for_data(spec, data, "student").train()
        calls = layer_calls(model)
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        counts.append(calls[0])
    assert counts == [2, 1]  # the checkpointed layer runs again in the backward pass
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_on_a_model_without_it_is_one_line(tmp_path):
    with pytest.raises(DistillError, match="gradient_checkpointing applies to Hugging Face transformer models"):
        loaded = load_recipe("quickstart_digits", ["student.gradient_checkpointing=true"])
        assemble(loaded, prepare_data(loaded), training=False)


def test_the_attention_kernel_is_a_recipe_key(tmp_path):
    torch.manual_seed(0)
    eager = llama(**TINY, attn_implementation="eager").eval()
    sdpa = llama(**TINY, attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 259, (2, 16))
    torch.testing.assert_close(eager(ids).logits, sdpa(ids).logits, rtol=1e-4, atol=1e-5)
    loaded = load_recipe("llm_kd_tiny", ["student.attn_implementation=eager", f"run.root={tmp_path}"])
    assert loaded.resolved["student"]["attn_implementation"] == "eager"


@pytest.mark.skipif(__import__("importlib").util.find_spec("flash_attn") is not None, reason="flash-attn installed")
def test_flash_attention_without_its_package_is_one_line(bf16_folder):
    from distill.models import create_model

    with pytest.raises(DistillError, match="attn_implementation flash_attention_2 needs the flash_attn package"):
        create_model(f"hf:{bf16_folder}", attn_implementation="flash_attention_2")
    with pytest.raises(DistillError, match="attn_implementation must be one of"):
        llama(**TINY, attn_implementation="flash")
