"""Lightning strategies on CPU: DDP with 2 processes (gloo) trains as one process with the same global batch; the
frozen teacher is left out of DDP and of the optimizer; strategies that cannot run here fail in one line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from distill.data.base import SeededShardSampler
from distill.models import create_model
from distill.tasks.classification import ClassificationTask
from losses import KDLoss

DISTILL = str(Path(sys.executable).parent / "distill")


def test_shards_of_the_ranks_make_the_single_process_batches():
    dataset = list(range(50))
    single = SeededShardSampler(dataset, num_replicas=1, rank=0)
    ranks = [SeededShardSampler(dataset, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in (single, *ranks):
        sampler.epoch_seed = 123
    order, parts = list(single), [list(r) for r in ranks]
    assert sorted(order) == dataset and len(parts[0]) == len(parts[1]) == 25
    for step in range(5):  # global batch 10 = 2 ranks x 5
        assert sorted(parts[0][step * 5 : step * 5 + 5] + parts[1][step * 5 : step * 5 + 5]) == sorted(
            order[step * 10 : step * 10 + 10]
        )
    single.epoch_seed = 124
    assert list(single) != order  # another epoch, another order


@pytest.fixture
def gloo_world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_leaves_the_frozen_teacher_out(gloo_world_of_one):
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[4, 8], hidden=8)
    student = create_model("mlp", num_classes=10, in_features=64, hidden=[16])
    module = ClassificationTask(student, teacher, num_classes=10, terms={"kd": (1.0, KDLoss())})
    module.setup("fit")
    wrapped = DistributedDataParallel(module)
    teacher_names = {f"teacher.{n}" for n, _ in [*teacher.named_parameters(), *teacher.named_buffers()]}
    assert teacher_names and teacher_names <= wrapped.parameters_to_ignore
    synchronized = {id(p) for p in wrapped._module_parameters}
    assert synchronized == {id(p) for p in student.parameters()}  # only the student is bucketed for all-reduce
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters()}


def write_recipe(folder: Path) -> Path:
    torch.manual_seed(0)
    teacher = create_model("convnet", num_classes=10, in_chans=1, widths=[8, 16], hidden=16)
    torch.save({"model": teacher.state_dict()}, folder / "teacher.pt")
    recipe = {
        "description": "ddp test",
        "seed": 0,
        "run": {"root": str(folder / "runs"), "name": "one"},
        "data": {"name": "digits", "batch_size": 64},
        "student": {"name": "mlp", "hidden": [32]},  # no BatchNorm: per-rank batch statistics would differ
        "teacher": {"model": {"name": "convnet", "widths": [8, 16], "hidden": 16}, "checkpoint": "teacher.pt"},
        "loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "scheduler": {"name": "constant"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def distill(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DISTILL, "fit", *args], capture_output=True, text=True, cwd=folder, timeout=300)


def test_two_ddp_processes_train_as_one_process_with_the_same_global_batch(tmp_path):
    recipe = str(write_recipe(tmp_path))
    one = distill(tmp_path, "--recipe", recipe)
    assert one.returncode == 0, one.stderr[-2000:]
    two = distill(
        tmp_path, "--recipe", recipe, "run.name=two", "data.batch_size=32", "trainer.devices=2", "trainer.strategy=ddp"
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs" / "two").iterdir()] == ["version_0"]  # one run folder, not one per rank
    single, ddp = (
        torch.load(tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("one", "two")
    )
    assert single["global_step"] == ddp["global_step"] == 17  # 1078 training digits / 64
    assert list(ddp["state_dict"]) == list(single["state_dict"])  # the student only
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-3, atol=1e-3)
    # test metrics gathered over both ranks' halves of the 360 test digits: the single process's, within one image
    results = [json.loads((tmp_path / "runs" / n / "version_0" / "results.json").read_text()) for n in ("one", "two")]
    assert results[1]["test"]["test/acc"] == pytest.approx(results[0]["test"]["test/acc"], abs=1 / 360 + 1e-6)
    states = ddp["optimizer_states"][0]
    assert len(states["state"]) == len(ddp["state_dict"])  # optimizer state for the student's tensors only


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("ddp_notebook", "'trainer.strategy' is 'ddp_notebook', which forks the running process into ranks"),
        (
            "deepspeed",
            "'trainer.strategy' is 'deepspeed': DeepSpeed runs on CUDA GPUs only, and the accelerator is cpu"
            if importlib.util.find_spec("deepspeed")  # installed by the dev extra
            else "'trainer.strategy' is 'deepspeed', which needs the deepspeed package",
        ),
    ],
)
def test_strategies_that_cannot_run_on_this_cpu_fail_in_one_line(tmp_path, strategy, message):
    recipe = str(write_recipe(tmp_path))
    done = distill(tmp_path, "--recipe", recipe, f"trainer.strategy={strategy}", "trainer.devices=2")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr
    assert not any((tmp_path / "runs" / "one").glob("version_*"))


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_ranks_fill_disjoint_halves_of_the_teacher_cache(tmp_path, strategy):
    from distill.data import CIFAR100DataModule
    from distill.data.synthetic import write_fake_cifar100
    from distill.teachers.output_cache import TeacherCache

    recipe = yaml.safe_load(write_recipe(tmp_path).read_text())
    write_fake_cifar100(tmp_path / "data", n_train=128, n_test=32, seed=0)
    torch.manual_seed(0)
    teacher = create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0).eval()
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pt")
    recipe["data"] = {"name": "cifar100", "root": "data", "num_workers": 0, "batch_size": 32, "on_device": True}
    recipe["student"] = {"name": "convnet", "widths": [4, 8], "hidden": 0}
    recipe["teacher"] = {"model": {"name": "convnet", "widths": [8, 16], "hidden": 0}, "checkpoint": "teacher.pt"}
    recipe["teacher"]["cache"] = "cache"
    recipe["trainer"]["max_epochs"] = 2
    (tmp_path / "cifar.yaml").write_text(yaml.safe_dump(recipe))
    done = distill(tmp_path, "--recipe", "cifar.yaml", "trainer.devices=2", f"trainer.strategy={strategy}")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    given = {k: v for k, v in meta.items() if k not in ("size", "num_classes", "top_k")}
    cache = TeacherCache(tmp_path / "cache", given, size=128, num_classes=100, top_k=None)
    assert cache.complete_epochs() == [0, 1]  # the two ranks' samples together: every sample of every epoch
    data = CIFAR100DataModule(root=str(tmp_path / "data"), num_workers=0, on_device=True)
    data.setup()
    indices = torch.arange(0, 128, 9)
    for epoch in (0, 1):  # what was written is the teacher's output on each sample's view of that epoch
        views = data.augmentation.view(data.train_set.images[indices], 0, epoch, indices)
        with torch.no_grad():
            torch.testing.assert_close(cache.read(epoch, indices), teacher(views), rtol=1e-5, atol=1e-5)


TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def torchrun(folder: Path, *args: str, run_id: str = "job7") -> subprocess.CompletedProcess:
    launcher = [TORCHRUN, "--nnodes=1", "--nproc-per-node=2", f"--rdzv-id={run_id}", "--rdzv-backend=c10d"]
    launcher += ["--rdzv-endpoint=127.0.0.1:0", "--role=distill"]
    command = [*launcher, "-m", "distill", "fit", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=300)


@pytest.mark.slow
def test_processes_started_by_torchrun_share_one_run_folder_named_after_the_job(tmp_path):
    recipe = str(write_recipe(tmp_path))
    ddp = ["--recipe", recipe, "data.batch_size=32", "trainer.devices=2", "trainer.strategy=ddp"]
    done = torchrun(tmp_path, *ddp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs" / "one").iterdir()] == ["torchrun_job7"]
    run = tmp_path / "runs" / "one" / "torchrun_job7"
    assert (run / "results.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert done.stdout.count("student accuracy") == 1
    # the same job id again would write into a finished run: refused, and the run is left as it was
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = torchrun(tmp_path, *ddp)
    assert again.returncode != 0
    assert f"run folder {run} already holds a run of job torchrun_job7" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow
def test_processes_started_by_torchrun_do_not_train_a_missing_teacher(tmp_path):
    recipe = yaml.safe_load(write_recipe(tmp_path).read_text())
    recipe["teacher"] = {"model": recipe["teacher"]["model"], "store": "teachers", "train": {}}
    (tmp_path / "untrained.yaml").write_text(yaml.safe_dump(recipe))
    done = torchrun(tmp_path, "--recipe", "untrained.yaml", "trainer.devices=2", "trainer.strategy=ddp")
    assert done.returncode != 0
    # each rank's one-line error (torchrun then prints its own failure report)
    assert done.stderr.count("distill: error: teacher: not trained yet") == 2
    assert not (tmp_path / "teachers").exists() and not any((tmp_path / "runs" / "one").iterdir())


def write_lm_recipe(folder: Path) -> Path:
    """A causal-LM recipe on prompt/response pairs whose rows hold very different numbers of trained tokens."""
    lines = [{"prompt": f"question {i}: ", "response": "answer " + "x" * (3 + (i * 7) % 45)} for i in range(40)]
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    teacher_spec = {"name": "llama", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1}
    torch.manual_seed(1)
    teacher = create_model(**teacher_spec, vocab_size=259)
    torch.save({"model": teacher.state_dict()}, folder / "teacher.pt")
    recipe = {
        "description": "ddp token normalization",
        "task": "causal_lm",
        "seed": 0,
        "run": {"root": str(folder / "runs"), "name": "one"},
        "data": {"name": "text", "source": "pairs.jsonl", "seq_len": 64, "packing": False, "batch_size": 8},
        "student": {"name": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
        "teacher": {"model": teacher_spec, "checkpoint": "teacher.pt"},
        "loss": {"ce_weight": 0.5, "terms": {"token_kl": {"weight": 0.5, "divergence": "forward_kl"}}},
        "optimizer": {"name": "sgd", "lr": 0.5},
        "scheduler": {"name": "constant"},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
    }
    path = folder / "lm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_two_ddp_processes_accumulating_unequal_micro_batches_train_as_one_process(tmp_path):
    recipe = str(write_lm_recipe(tmp_path))
    one = distill(tmp_path, "--recipe", recipe)
    assert one.returncode == 0, one.stderr[-2000:]
    two = [
        "run.name=two",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    done = distill(tmp_path, "--recipe", recipe, *two)
    assert done.returncode == 0, done.stderr[-2000:]
    single, ddp = (
        torch.load(tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("one", "two")
    )
    assert single["global_step"] == ddp["global_step"] == 5  # 36 training rows in steps of 8
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-4, atol=1e-5)
