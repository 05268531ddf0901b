"""`trainer.strategy: fsdp` (engine.fsdp, FSDP2 over gloo on this CPU): the student is sharded, each frozen model
sharded or replicated, the teacher never gets gradients or optimizer state, and checkpoints are student-only files
that a sharded run and a single process both resume from."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from distill.engine.fsdp import ShardedDistillation, resolve_placement, shard_units, weight_bytes
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from losses import KDLoss
from tests.test_strategies import distill, write_recipe


def test_auto_replicates_a_frozen_model_that_fits_a_quarter_of_a_device():
    model = torch.nn.Linear(100, 100)  # 10100 float32 weights
    size = weight_bytes(model)
    assert size == 10100 * 4
    assert resolve_placement("auto", model, device_bytes=4 * size) == "replicate"
    assert resolve_placement("auto", model, device_bytes=4 * size - 1) == "shard"
    assert resolve_placement("shard", model, device_bytes=10**12) == "shard"
    assert resolve_placement("replicate", model, device_bytes=1) == "replicate"


def test_shard_units_are_decoder_layers_or_top_level_children():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2
    )
    llama = LlamaForCausalLM(config)
    assert [type(m).__name__ for m in shard_units(llama)] == ["LlamaDecoderLayer"] * 3
    block = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    cnn = torch.nn.Sequential(torch.nn.Linear(4, 4), block, torch.nn.Sequential(torch.nn.ReLU()), torch.nn.Linear(8, 2))
    assert shard_units(cnn) == [block]  # single layers stay with the model; a block without weights is no unit


class RecordLayout(Callback):
    """Before the first optimizer step: how the teacher and student are laid out, and who has gradients."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.path.exists():
            return
        teacher, student = list(module.teacher.parameters()), list(module.student.parameters())
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in teacher)
        record = {
            "teacher_dtensors": sum(isinstance(p, DTensor) for p in teacher),
            "teacher_tensors": len(teacher),
            "teacher_local_fraction": local / sum(p.numel() for p in teacher),
            "teacher_grads": sum(p.grad is not None for p in teacher),
            "teacher_requires_grad": sum(p.requires_grad for p in teacher),
            "teacher_grad_hooks": sum(bool(p._post_accumulate_grad_hooks or p._backward_hooks) for p in teacher),
            "student_dtensors": sum(isinstance(p, DTensor) for p in student),
            "student_grads": sum(p.grad is not None for p in student),
            "student_tensors": len(student),
            "optimizer_is_student": optimized == {id(p) for p in student},
            "placements": trainer.strategy.placements,
        }
        self.path.write_text(json.dumps(record))


def train_two_steps(rank: int, folder: str, port: int, placement: str) -> None:
    """One of two processes (started by the test, as torchrun would) training a distill task for two steps."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.manual_seed(0)
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[4, 8], hidden=8)
    student = create_model("mlp", num_classes=10, in_features=64, hidden=[16])
    module = ClassificationTask(student, teacher, num_classes=10, terms={"kd": (1.0, KDLoss())})
    data = TensorDataset(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ShardedDistillation(frozen=placement),
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[RecordLayout(Path(folder) / f"rank{rank}.json")],
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    # leave together: a rank that exits while the other still talks to it over gloo can abort it
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("placement", ["shard", "replicate"])
def test_teacher_is_sharded_or_replicated_and_never_trained(tmp_path, placement, capfd):
    mp.start_processes(train_two_steps, args=(str(tmp_path), free_port(), placement), nprocs=2, start_method="spawn")
    said = {"shard": "teacher sharded (0.0 MiB)", "replicate": "teacher replicated (0.0 MiB)"}[placement]
    assert capfd.readouterr().out.count(f"fsdp: 2 ranks; student sharded; {said}") == 1  # rank 0 says it once
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["placements"] == {"teacher": placement}
        sharded = placement == "shard"
        assert record["teacher_dtensors"] == (record["teacher_tensors"] if sharded else 0)
        # each rank holds half of a sharded teacher (every tensor here has an even first dimension), all of a copy
        assert record["teacher_local_fraction"] == (0.5 if sharded else 1.0)
        assert record["teacher_grads"] == record["teacher_requires_grad"] == record["teacher_grad_hooks"] == 0
        assert record["student_dtensors"] == record["student_grads"] == record["student_tensors"] > 0
        assert record["optimizer_is_student"]


def load(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_student(a: dict, b: dict, tolerance: float = 1e-3) -> None:
    assert list(a["state_dict"]) == list(b["state_dict"])
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=tolerance, atol=tolerance)


# slow (~55 s on 2 cores): FSDP training stays covered by the language-model FSDP test below
@pytest.mark.slow
def test_fsdp_trains_as_one_process_and_its_checkpoints_resume_sharded_or_in_one_process(tmp_path):
    recipe = str(write_recipe(tmp_path))
    one = distill(tmp_path, "--recipe", recipe)
    assert one.returncode == 0, one.stderr[-2000:]
    sharded = ["data.batch_size=32", "trainer.devices=2", "trainer.strategy=fsdp"]
    fsdp = distill(tmp_path, "--recipe", recipe, "run.name=fsdp", "fsdp.frozen=shard", *sharded)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    assert fsdp.stdout.count("student accuracy") == 1  # the summary is printed once, not once per rank
    assert "fsdp: 2 ranks; student sharded; teacher sharded" in fsdp.stdout
    runs = tmp_path / "runs"
    assert [p.name for p in (runs / "fsdp").iterdir()] == ["version_0"]
    single, split = load(runs / "one" / "version_0"), load(runs / "fsdp" / "version_0")
    assert single["global_step"] == split["global_step"] == 17
    assert_same_student(single, split)  # student keys only, equal weights
    # optimizer state gathered into the single-process layout: the same tensors under the same keys
    assert split["optimizer_states"][0]["param_groups"] == single["optimizer_states"][0]["param_groups"]
    assert split["optimizer_states"][0]["state"].keys() == single["optimizer_states"][0]["state"].keys()
    results = [json.loads((runs / n / "version_0" / "results.json").read_text())["test"] for n in ("one", "fsdp")]
    assert results[1]["test/acc"] == pytest.approx(results[0]["test/acc"], abs=1 / 360 + 1e-6)

    # the sharded checkpoint resumes sharded, and in a single process with the same global batch
    shutil.copytree(runs / "fsdp", runs / "copy")
    again = distill(tmp_path, "--resume", str(runs / "fsdp" / "version_0"), "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-2000:]
    alone = ["trainer.max_epochs=2", "trainer.strategy=auto", "trainer.devices=1", "data.batch_size=64"]
    moved = distill(tmp_path, "--resume", str(runs / "copy" / "version_0"), *alone)
    assert moved.returncode == 0, moved.stderr[-2000:]
    resumed_sharded, resumed_alone = load(runs / "fsdp" / "version_0"), load(runs / "copy" / "version_0")
    assert resumed_sharded["global_step"] == resumed_alone["global_step"] == 34
    assert_same_student(resumed_alone, resumed_sharded)


@pytest.mark.slow
def test_fsdp_shards_a_language_model_teacher_by_decoder_layer_and_trains_as_one_process(tmp_path):
    llama = {"name": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    torch.manual_seed(0)
    teacher = create_model(**llama, vocab_size=259, num_hidden_layers=2)  # the bytes tokenizer's 259 ids
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    recipe = {
        "task": "causal_lm",
        "run": {"root": str(tmp_path / "runs"), "name": "one"},
        "data": {"name": "text", "source": "python_stdlib", "tokenizer": "bytes", "seq_len": 32, "batch_size": 8},
        "student": {**llama, "num_hidden_layers": 1},
        "teacher": {"model": {**llama, "num_hidden_layers": 2}, "checkpoint": "teacher.pt"},
        "loss": {"ce_weight": 0.5, "terms": {"token_kl": {"weight": 0.5}}},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "scheduler": {"name": "constant"},
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 6,
            "limit_val_batches": 2,
            "limit_test_batches": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
        },
    }
    (tmp_path / "lm.yaml").write_text(json.dumps(recipe))
    one = distill(tmp_path, "--recipe", "lm.yaml")
    assert one.returncode == 0, one.stderr[-2000:]
    sharded = ["run.name=fsdp", "data.batch_size=4", "trainer.devices=2", "trainer.strategy=fsdp", "fsdp.frozen=shard"]
    fsdp = distill(tmp_path, "--recipe", "lm.yaml", *sharded)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    assert "teacher sharded" in fsdp.stdout
    runs = tmp_path / "runs"
    single, split = load(runs / "one" / "version_0"), load(runs / "fsdp" / "version_0")
    assert single["global_step"] == split["global_step"] == 6
    assert_same_student(single, split, tolerance=1e-4)
    results = [json.loads((runs / n / "version_0" / "results.json").read_text())["test"] for n in ("one", "fsdp")]
    for key in ("test/loss", "test/teacher_loss", "test/kl"):  # the same 16 test rows, gathered over the ranks
        assert results[1][key] == pytest.approx(results[0][key], rel=1e-4)
