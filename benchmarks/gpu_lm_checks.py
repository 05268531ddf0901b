"""Language-model paths that only a GPU exercises for real, each printed the moment it is measured:

1. packed rows (several conversations per row, position ids restarting at each) give each conversation the logits
   it gets alone, with the attention kernel transformers picks on the device (sdpa; fp32 and bf16);
2. a Hugging Face student saved in bf16 trains under `bf16-mixed` with gradient checkpointing through `distill fit`
   on the device, and keeps fp32 weights.

    python benchmarks/gpu_lm_checks.py --device cuda      (about a minute on one H200; --device cpu works too)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.config import locate  # noqa: E402
from distill.models.causal_lm import llama  # noqa: E402


def say(line: str) -> None:
    print(line, flush=True)


def packed_rows(device: str) -> None:
    from distill.data import create_datamodule
    from distill.tasks.lm_outputs import row_inputs, run_lm
    from tests.data.test_chat_rows import chats
    from tests.helpers_chat import conversations_file

    with tempfile.TemporaryDirectory() as folder:
        source = conversations_file(Path(folder) / "chats.jsonl", chats(12))
        data = create_datamodule("text", source=str(source), chat_template="chatml", packing=True, seq_len=512)
        data.setup()
        rows = {key: value[:1].long().to(device) for key, value in data.train_set.tensors.items()}
    starts = (rows["position_ids"][0] == 0).nonzero().flatten().tolist()
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2).to(device, dtype).eval()
        with torch.no_grad():
            packed = run_lm(model, rows["input_ids"], row_inputs(rows), {}, False).logits.float()
            worst = 0.0
            for start, end in zip(starts, starts[1:], strict=False):
                alone = model(input_ids=rows["input_ids"][:, start:end]).logits[:, :-1].float()
                worst = max(worst, (packed[:, start : end - 1] - alone).abs().max().item())
            crossed = run_lm(model, rows["input_ids"], {"attention_mask": rows["attention_mask"]}, {}, False)
            leak = crossed.logits.float()[:, starts[1] : starts[2] - 1] - packed[:, starts[1] : starts[2] - 1]
        say(
            f"packed rows {str(dtype).removeprefix('torch.'):9s} {model.config._attn_implementation}: "
            f"{len(starts) - 1} conversations, max |packed - alone| {worst:.2e}; "
            f"mask-only control differs by {leak.abs().max().item():.2e}"
        )


def bf16_student_fit(device: str) -> None:
    accelerator = "gpu" if device == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        llama(hidden_size=64, intermediate_size=128, num_hidden_layers=2).to(torch.bfloat16).save_pretrained(
            folder / "bf16_model"
        )
        recipe = yaml.safe_load(locate("llm_kd_tiny").read_text())
        recipe["student"] = {"name": f"hf:{folder / 'bf16_model'}", "gradient_checkpointing": True}
        recipe["teacher"] = {"model": {"name": f"hf:{folder / 'bf16_model'}"}, "dtype": "bfloat16"}
        recipe["run"] = {"root": str(folder / "runs"), "name": "bf16"}
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        command = [
            str(Path(sys.executable).parent / "distill"), "fit", "--recipe", str(folder / "recipe.yaml"),
            f"trainer.accelerator={accelerator}", "trainer.precision=bf16-mixed", "trainer.max_epochs=1",
            "trainer.limit_train_batches=20", "trainer.limit_val_batches=2", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "optimizer.lr=2e-5", "data.max_documents=200",
        ]  # fmt: skip
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        took = time.perf_counter() - began
        if done.returncode != 0:
            say(f"bf16 student fit: exit {done.returncode} after {took:.0f} s: {done.stderr.strip().splitlines()[-1:]}")
            return
        state = torch.load(folder / "runs/bf16/version_0/checkpoints/last.ckpt", weights_only=True)["state_dict"]
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for k, v in state.items() if k.startswith("student.")})
        what = f"bf16 student fit ({accelerator}, bf16-mixed, gradient checkpointing)"
        say(f"{what}: ok in {took:.0f} s; weights {dtypes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    say(f"device {args.device}, torch {torch.__version__}")
    packed_rows(args.device)
    bf16_student_fit(args.device)


if __name__ == "__main__":
    main()
