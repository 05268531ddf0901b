"""Every name `trainer.strategy` can take (Lightning's registered strategies and `auto`): the FSDP family becomes
distill's sharded strategy with that name's options, the names that run as Lightning builds them build a Trainer
here, and the rest are refused in one line, when the recipe is read, naming what to use instead."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.distributed as dist
import yaml
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from distill.config.strategies import strategy_names, strategy_problem
from distill.engine.fsdp import ShardedDistillation, detached, shard
from distill.engine.trainer import build_trainer, with_strategy
from distill.errors import DistillError
from tests.test_strategies import distill, write_recipe

# what distill does with each name on this CPU; a name Lightning adds later fails the first test until it is placed
SHARDED = {"fsdp": False, "fsdp_cpu_offload": True}  # name -> cpu_offload
AS_BUILT = {  # name -> (Lightning's class, DDP start method, find_unused_parameters)
    "auto": (SingleDeviceStrategy, None, None),
    "single_device": (SingleDeviceStrategy, None, None),
    "ddp": (DDPStrategy, "popen", False),
    "ddp_spawn": (DDPStrategy, "spawn", False),
    "ddp_find_unused_parameters_false": (DDPStrategy, "popen", False),
    "ddp_find_unused_parameters_true": (DDPStrategy, "popen", True),
    "ddp_spawn_find_unused_parameters_false": (DDPStrategy, "spawn", False),
    "ddp_spawn_find_unused_parameters_true": (DDPStrategy, "spawn", True),
}
FORKING = {n for n in strategy_names() if n.startswith(("ddp_fork", "ddp_notebook"))}
DEEPSPEED = {n for n in strategy_names() if n.startswith("deepspeed")}
XLA = {"xla", "xla_debug", "single_xla", "single_tpu"}


def test_every_name_is_placed():
    placed = [*SHARDED, *AS_BUILT, *FORKING, *DEEPSPEED, *XLA]
    assert sorted(placed) == sorted(strategy_names())  # each name once
    assert len(FORKING) == 6 and len(DEEPSPEED) == 7


@pytest.mark.parametrize("name", sorted(SHARDED))
def test_the_fsdp_family_becomes_distills_sharded_strategy_with_its_options(name):
    args = {"strategy": name, "accelerator": "cpu", "devices": 1}
    assert strategy_problem(args) is None
    strategy = with_strategy(args)["strategy"]
    assert isinstance(strategy, ShardedDistillation)
    assert strategy.cpu_offload is SHARDED[name]
    trainer = build_trainer(**with_strategy(args), logger=False, enable_checkpointing=False)
    assert trainer.strategy is not strategy and isinstance(trainer.strategy, ShardedDistillation)  # a fresh one
    # Lightning lower-cases the names: so does distill, or `FSDP` would be Lightning's FSDP1, teacher and all
    assert isinstance(with_strategy({"strategy": name.upper()})["strategy"], ShardedDistillation)


@pytest.mark.parametrize("name", sorted(AS_BUILT))
def test_names_lightning_runs_as_built_make_a_trainer_here(name):
    args = {"strategy": name, "accelerator": "cpu", "devices": 1}
    assert strategy_problem(args) is None
    assert with_strategy(args) == args  # passed on unchanged
    trainer = build_trainer(**args, logger=False, enable_checkpointing=False)
    cls, start_method, unused = AS_BUILT[name]
    assert type(trainer.strategy) is cls
    if cls is DDPStrategy:
        assert trainer.strategy._start_method == start_method
        assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is unused


@pytest.mark.parametrize("name", sorted(FORKING | DEEPSPEED | XLA))
def test_names_that_cannot_run_here_are_refused_in_one_line_naming_another(name):
    if name in XLA and importlib.util.find_spec("torch_xla"):
        pytest.skip("torch_xla is installed")
    problem = strategy_problem({"strategy": name, "accelerator": "cpu", "devices": 1})
    assert problem is not None and "\n" not in problem and f"is '{name}'" in problem
    if name in FORKING:
        assert problem.endswith("a forked rank hangs: use ddp or ddp_spawn")
    elif name in DEEPSPEED:
        assert problem.endswith("use ddp or fsdp") or "needs the deepspeed package" in problem
    else:
        assert "needs torch_xla and a TPU" in problem


def test_deepspeed_on_a_gpu_needs_the_package_and_nvme_offload_its_folder(monkeypatch):
    gpu = {"accelerator": "gpu", "devices": 1}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    missing = strategy_problem({**gpu, "strategy": "deepspeed_stage_2"})
    assert (
        missing
        == "is 'deepspeed_stage_2', which needs the deepspeed package (pip install 'distill[deepspeed]'); or use fsdp"
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else None)
    assert strategy_problem({**gpu, "strategy": "deepspeed_stage_3_offload"}) is None
    nvme = strategy_problem({**gpu, "strategy": "deepspeed_stage_3_offload_nvme"})
    assert nvme.startswith("is 'deepspeed_stage_3_offload_nvme', which offloads to /local_nvme, a folder this machine")
    cpu = strategy_problem({"accelerator": "cpu", "strategy": "deepspeed"})
    assert cpu == "is 'deepspeed': DeepSpeed runs on CUDA GPUs only, and the accelerator is cpu; use ddp or fsdp"


def test_an_unknown_name_gets_the_close_match_or_the_names():
    assert strategy_problem({"strategy": "fdsp"}) == "is 'fdsp', which is no strategy (did you mean 'fsdp'?)"
    far = strategy_problem({"strategy": "warp"})
    assert far.startswith("is 'warp', which is no strategy (names: auto, ddp, ddp_spawn,")
    assert "fsdp_cpu_offload" in far and "_find_unused_parameters_true" in far
    assert strategy_problem({"strategy": 3}) == "must be a strategy name (auto, ddp or fsdp...), got 3"


@pytest.fixture
def gloo_world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_cpu_offload_shards_every_block_into_cpu_memory(gloo_world_of_one):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    def offloaded(model: torch.nn.Module) -> list[bool]:
        groups = [
            g for m in model.modules() if isinstance(m, FSDPModule) for g in m._get_fsdp_state()._fsdp_param_groups
        ]
        return [p.offload_to_cpu for g in groups for p in g.fsdp_params]

    mesh = init_device_mesh("cpu", (1,))
    block = lambda: torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())  # noqa: E731
    on, off = torch.nn.Sequential(block(), block(), torch.nn.Linear(4, 2)), torch.nn.Sequential(block(), block())
    shard(on, mesh, cpu_offload=True)
    shard(off, mesh)
    assert offloaded(on) == [True] * 6 and offloaded(off) == [False] * 4
    optimizer = torch.optim.AdamW(on.parameters())
    on(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # a step on CPU-held shards
    assert all(p.device.type == "cpu" for p in on.parameters())


def test_the_offloaded_models_are_kept_out_of_the_move_to_the_device():
    # on a GPU, ShardedDistillation.model_to_device moves the task but not the shards FSDP keeps in CPU memory
    task = torch.nn.ModuleDict({"student": torch.nn.Linear(2, 2), "teacher": torch.nn.Linear(2, 2)})
    task["head"] = torch.nn.Sequential(task["student"])  # a second parent: the student is taken out of both
    with detached(task, [task["student"]]):
        task.to(torch.float64)
        assert task["student"] is None and task["head"][0] is None
    assert task["student"] is task["head"][0]
    assert task["student"].weight.dtype == torch.float32 and task["teacher"].weight.dtype == torch.float64


def test_a_refused_strategy_stops_the_recipe_before_any_teacher_is_trained(tmp_path):
    from distill.config.load import from_dict

    recipe = yaml.safe_load(write_recipe(tmp_path).read_text())
    recipe["teacher"] = {"model": recipe["teacher"]["model"], "store": "teachers", "train": {"trainer": {}}}
    recipe["teacher"]["train"]["trainer"]["strategy"] = "ddp_fork"
    with pytest.raises(DistillError, match="'teacher.train.trainer.strategy' is 'ddp_fork', which forks"):
        from_dict(recipe, "recipe")
    assert not (tmp_path / "teachers").exists()


@pytest.mark.slow  # ~15 s; the routing that fixes it is checked above in the default run
def test_fsdp_cpu_offload_fits_and_tests_its_best_checkpoint_on_the_cpu(tmp_path):
    # the GPU run's failure: Lightning's FSDP loaded the best checkpoint for testing and missed the teacher's weights
    recipe = str(write_recipe(tmp_path))
    short = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    done = distill(tmp_path, "--recipe", recipe, "trainer.strategy=fsdp_cpu_offload", *short)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fsdp: 1 ranks; student sharded (shards in CPU memory); teacher replicated" in done.stdout
    run = tmp_path / "runs" / "one" / "version_0"
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["state_dict"] and all(k.startswith("student.") for k in best["state_dict"])
    assert "test/acc" in json.loads((run / "results.json").read_text())["test"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp_spawn", "ddp_find_unused_parameters_true"])
def test_ddp_variants_run_end_to_end_on_one_cpu_process(tmp_path, name):
    recipe = str(write_recipe(tmp_path))
    short = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    done = distill(tmp_path, "--recipe", recipe, f"trainer.strategy={name}", *short)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "one" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert last and all(k.startswith("student.") for k in last)  # the teacher stays out, as without a strategy
    assert "test/acc" in json.loads((run / "results.json").read_text())["test"]


@pytest.mark.slow
def test_fsdp_cpu_offload_over_two_ranks_resumes_in_one_process(tmp_path):
    recipe = str(write_recipe(tmp_path))
    two = ["data.batch_size=32", "trainer.devices=2", "trainer.strategy=fsdp_cpu_offload", "fsdp.frozen=shard"]
    done = distill(tmp_path, "--recipe", recipe, "trainer.limit_train_batches=4", *two)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fsdp: 2 ranks; student sharded (shards in CPU memory); teacher sharded" in done.stdout
    run = tmp_path / "runs" / "one" / "version_0"
    alone = ["trainer.max_epochs=2", "trainer.strategy=auto", "trainer.devices=1", "data.batch_size=64"]
    again = distill(tmp_path, "--resume", str(run), "trainer.limit_train_batches=4", *alone)
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
