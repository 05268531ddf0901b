"""The teacher-output cache: exact with all classes, top-k rebuilt faithfully, mismatches refused, and a cached
run that trains exactly as the online run it was filled by."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from distill.config import from_dict
from distill.data.synthetic import write_fake_cifar100
from distill.engine.pipeline import fit
from distill.errors import DistillError
from distill.models import create_model
from distill.teachers.output_cache import TeacherCache
from tests.helpers import FAST_TRAINER

META = {"teacher": "t", "data": "d"}


def logits(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


def test_all_classes_are_read_back_exactly_once_every_sample_is_written(tmp_path):
    cache = TeacherCache(tmp_path / "cache", META, size=10, num_classes=7, top_k=None)
    values = logits(10, 7)
    cache.write(0, torch.tensor([1, 3, 5]), values[[1, 3, 5]])
    torch.testing.assert_close(cache.read(0, torch.tensor([5, 1])), values[[5, 1]], rtol=0, atol=0)
    assert cache.read(0, torch.tensor([1, 2])) is None  # sample 2 not written yet
    assert cache.read(1, torch.tensor([1])) is None  # another epoch, other views
    cache.write(0, torch.arange(10), values)
    cache.flush()
    again = TeacherCache(tmp_path / "cache", META, size=10, num_classes=7, top_k=None)  # a later run
    torch.testing.assert_close(again.read(0, torch.arange(10)), values, rtol=0, atol=0)
    assert again.complete_epochs() == [0]


def test_top_k_keeps_the_top_probabilities_and_spreads_the_rest(tmp_path):
    cache = TeacherCache(tmp_path / "cache", META, size=4, num_classes=9, top_k=3)
    values = logits(4, 9, seed=1)
    cache.write(2, torch.arange(4), values)
    rebuilt = cache.read(2, torch.arange(4))
    true_p, rebuilt_p = values.softmax(1), rebuilt.softmax(1)
    top = values.topk(3, dim=1).indices
    torch.testing.assert_close(rebuilt_p.gather(1, top), true_p.gather(1, top))
    rest = torch.ones_like(rebuilt_p, dtype=torch.bool).scatter_(1, top, False)
    others = rebuilt_p[rest].view(4, 6)
    torch.testing.assert_close(others, others[:, :1].expand(-1, 6))  # the remaining mass shared evenly
    torch.testing.assert_close(others.sum(1), 1 - true_p.gather(1, top).sum(1))


@pytest.mark.parametrize("top_k", [None, 3])
def test_a_complete_epoch_is_read_whole_once_and_each_batch_is_one_gather_with_the_same_logits(tmp_path, top_k):
    from tests.op_count import OpCount

    values = logits(12, 9, seed=2)
    TeacherCache(tmp_path / "cache", META, size=12, num_classes=9, top_k=top_k).write(0, torch.arange(12), values)
    per_batch = TeacherCache(tmp_path / "cache", META, size=12, num_classes=9, top_k=top_k, resident=False)
    resident = TeacherCache(tmp_path / "cache", META, size=12, num_classes=9, top_k=top_k, resident=True)
    batch = torch.tensor([7, 0, 11, 3])
    torch.testing.assert_close(resident.read(0, batch), per_batch.read(0, batch), rtol=0, atol=0)
    with OpCount() as count:
        again = resident.read(0, torch.tensor([2, 7]))
    assert count.kernels == 1 and count.reads == 0, count.ops  # the gather: no copy of the indices to the host
    torch.testing.assert_close(again, per_batch.read(0, torch.tensor([2, 7])), rtol=0, atol=0)
    assert resident.resident_epoch(1, batch.device) is None  # an epoch not cached: read per batch (None here)
    # by default only indices on an accelerator make an epoch resident
    assert TeacherCache(tmp_path / "cache", META, 12, 9, top_k).resident_epoch(0, batch.device) is None


def test_a_cache_of_another_setup_is_refused_with_the_differences_named(tmp_path):
    TeacherCache(tmp_path / "cache", META, size=4, num_classes=5, top_k=None)
    with pytest.raises(DistillError, match=r"holds the outputs of another setup \(differs in: data\)"):
        TeacherCache(tmp_path / "cache", {**META, "data": "other"}, size=4, num_classes=5, top_k=None)
    with pytest.raises(DistillError, match="differs in: top_k"):
        TeacherCache(tmp_path / "cache", META, size=4, num_classes=5, top_k=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DistillError, match="is not empty and has no meta.json"):
        TeacherCache(tmp_path / "busy", META, size=4, num_classes=5, top_k=None)
    with pytest.raises(DistillError, match=r"cache_top_k must be in \[1, 5\]"):
        TeacherCache(tmp_path / "new", META, size=4, num_classes=5, top_k=6)


class TeacherCalls(Callback):
    """Counts the teacher's forward passes inside training batches."""

    def __init__(self) -> None:
        self.calls, self.in_batch = 0, False

    def on_fit_start(self, trainer, module) -> None:
        module.teacher.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + self.in_batch))

    def on_train_batch_start(self, *args) -> None:
        self.in_batch = True

    def on_train_batch_end(self, *args) -> None:
        self.in_batch = False


def cifar_recipe(tmp_path, teacher_file, name: str, **teacher) -> dict:
    return {
        "seed": 3,
        "run": {"root": str(tmp_path / "runs"), "name": name},
        "data": {
            "name": "cifar100",
            "root": str(tmp_path / "data"),
            "num_workers": 0,
            "batch_size": 32,
            "on_device": True,
            "augment_seed": 5,
        },
        "student": {"name": "convnet", "widths": [4, 8], "hidden": 0},
        "teacher": {
            "model": {"name": "convnet", "widths": [8, 16], "hidden": 0},
            "checkpoint": str(teacher_file),
            **teacher,
        },
        "loss": {"ce_weight": 0.1, "terms": {"kd": {"weight": 0.9, "temperature": 4.0}}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "scheduler": {"name": "constant"},
        "trainer": {**FAST_TRAINER, "max_epochs": 2, "log_every_n_steps": 1},
    }


def train_losses(run_dir) -> list[float]:
    with open(run_dir / "logs" / "metrics.csv") as file:
        return [float(r["train/loss"]) for r in csv.DictReader(file) if r.get("train/loss")]


def test_a_cached_run_trains_as_the_online_run_without_running_the_teacher(tmp_path):
    write_fake_cifar100(tmp_path / "data", n_train=96, n_test=32, seed=0)
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save(
        {"model": create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0).state_dict()},
        teacher_file,
    )
    cache = str(tmp_path / "cache")
    online = fit(from_dict(cifar_recipe(tmp_path, teacher_file, "online"), "test"))
    filling = fit(from_dict(cifar_recipe(tmp_path, teacher_file, "filling", cache=cache), "test"))
    calls = TeacherCalls()
    cached = fit(from_dict(cifar_recipe(tmp_path, teacher_file, "cached", cache=cache), "test"), callbacks=[calls])
    assert calls.calls == 0  # every training batch read the teacher's outputs from the cache
    reference = train_losses(online.run_dir)
    assert len(reference) == 6  # 3 batches x 2 epochs
    for run in (filling, cached):
        torch.testing.assert_close(train_losses(run.run_dir), reference, rtol=1e-5, atol=1e-6)
    assert cached.metrics["test/acc"] == pytest.approx(online.metrics["test/acc"])
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["views"]["augment_seed"] == 5 and meta["top_k"] == 100
    # Another teacher's weights with the same cache: refused before anything is written
    torch.save(
        {"model": create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0).state_dict()},
        tmp_path / "other.pt",
    )
    with pytest.raises(DistillError, match=r"differs in: teacher"):
        fit(from_dict(cifar_recipe(tmp_path, tmp_path / "other.pt", "other", cache=cache), "test"))
    assert not (tmp_path / "runs" / "other").exists() or not any((tmp_path / "runs" / "other").iterdir())


def test_a_cache_needs_replayable_views(tmp_path):
    write_fake_cifar100(tmp_path / "data", n_train=96, n_test=32, seed=0)
    teacher_file = tmp_path / "teacher.pt"
    torch.save(
        {"model": create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0).state_dict()},
        teacher_file,
    )
    raw = cifar_recipe(tmp_path, teacher_file, "plain", cache=str(tmp_path / "cache"))
    raw["data"]["on_device"] = False
    with pytest.raises(DistillError, match="teacher.cache needs data whose views are replayable"):
        fit(from_dict(raw, "test"))


class HostWork(Callback):
    """Per training step: the reads of device values to the host and the tensors made from host numbers (on a GPU,
    each a wait for the device's queue)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        from tests.op_count import OpCount

        self.count = OpCount().__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.count.__exit__(None, None, None)
        self.steps.append((self.count.reads, self.count.host_values))

    def on_exception(self, trainer, module, exception) -> None:
        self.count.__exit__(None, None, None)


def test_the_fast_paths_cached_step_waits_for_the_device_only_at_logging_steps(tmp_path, monkeypatch):
    """The GPU fast path as a CPU can show it: on-device data, the teacher's outputs from a cache held on the
    device, the non-finite check kept on the device: between logging steps a step reads nothing back and makes
    no tensor from host numbers."""
    import functools

    from distill.engine import faults
    from distill.teachers import output_cache

    write_fake_cifar100(tmp_path / "data", n_train=96, n_test=32, seed=0)
    torch.manual_seed(0)
    teacher_file = tmp_path / "teacher.pt"
    model = create_model("convnet", num_classes=100, in_chans=3, widths=[8, 16], hidden=0)
    torch.save({"model": model.state_dict()}, teacher_file)
    cache = str(tmp_path / "cache")
    fit(from_dict(cifar_recipe(tmp_path, teacher_file, "filling", cache=cache), "test"))
    # what an accelerator decides by itself: the checks and the cache kept on the device
    monkeypatch.setattr(faults, "StopOnNonFiniteLoss", functools.partial(faults.StopOnNonFiniteLoss, every_step=False))
    monkeypatch.setattr(
        output_cache.TeacherCache,
        "__init__",
        functools.partialmethod(output_cache.TeacherCache.__init__, resident=True),
    )
    recipe = cifar_recipe(tmp_path, teacher_file, "cached", cache=cache)
    recipe["data"]["batch_size"] = 8  # 12 steps an epoch
    recipe["trainer"]["log_every_n_steps"] = 5
    seen = HostWork()
    fit(from_dict(recipe, "test"), callbacks=[seen])
    # an epoch's first step reads its cached logits onto the device once; every 5th step and each epoch's last are
    # logging steps
    once_or_logging = {0, 12} | {4, 9, 14, 19} | {11, 23}
    assert len(seen.steps) == 24
    for step, (reads, host_values) in enumerate(seen.steps):
        if step not in once_or_logging:
            assert (reads, host_values) == (0, 0), step
    assert any(reads for reads, _ in seen.steps)  # the logs and the checks are read, at the logging steps
