"""Optimizers and per-step learning-rate schedules built from the recipe's settings."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config.schema import OptimizerSettings, SchedulerSettings
from distill.engine.optim import build_optimizer, build_scheduler, lr_factor


def factors(settings: SchedulerSettings, steps: int, steps_per_epoch: int, total_steps: int, base_lr: float = 0.1):
    return [lr_factor(settings, step, steps_per_epoch, total_steps, base_lr) for step in range(steps)]


def test_multistep_drops_by_gamma_at_milestone_epochs() -> None:
    settings = SchedulerSettings(name="multistep", milestones=[2, 4], gamma=0.1)
    # 3 steps per epoch: epochs 0-1 (steps 0-5) at 1, epochs 2-3 (steps 6-11) at 0.1, from epoch 4 (step 12) at 0.01
    expected = [1.0] * 6 + [0.1] * 6 + [0.01] * 6
    assert factors(settings, 18, steps_per_epoch=3, total_steps=18) == pytest.approx(expected)


def test_multistep_after_warmup() -> None:
    settings = SchedulerSettings(name="multistep", milestones=[3], gamma=0.5, warmup_epochs=1)
    got = factors(settings, 16, steps_per_epoch=4, total_steps=16)
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0] + [1.0] * 8 + [0.5] * 4)


@pytest.mark.parametrize(
    ("warmup_epochs", "steps_per_epoch", "warmup_steps"), [(2, 5, 10), (0.5, 4, 2), (1, 1, 1), (1.5, 10, 15)]
)
def test_linear_warmup_reaches_base_lr_at_its_end(warmup_epochs: float, steps_per_epoch: int, warmup_steps: int):
    settings = SchedulerSettings(name="constant", warmup_epochs=warmup_epochs)
    got = factors(settings, warmup_steps + 5, steps_per_epoch, total_steps=100)
    assert got[:warmup_steps] == pytest.approx([(k + 1) / warmup_steps for k in range(warmup_steps)])
    assert got[warmup_steps - 1] == pytest.approx(1.0)
    assert got[warmup_steps:] == pytest.approx([1.0] * 5)
    assert all(b > a for a, b in zip(got[:warmup_steps], got[1:warmup_steps], strict=False))


def test_cosine_ends_at_min_lr_and_is_monotone_after_warmup() -> None:
    base_lr, min_lr, steps_per_epoch, total = 0.1, 0.001, 4, 24
    settings = SchedulerSettings(name="cosine", warmup_epochs=1, min_lr=min_lr)
    got = factors(settings, total + 5, steps_per_epoch, total, base_lr)
    after_warmup = got[steps_per_epoch : total + 1]

    assert got[steps_per_epoch - 1] == pytest.approx(1.0)  # end of warm-up
    assert after_warmup[0] == pytest.approx(1.0)  # cosine starts at the base lr
    assert all(b < a for a, b in zip(after_warmup, after_warmup[1:], strict=False))  # strictly decreasing until the end
    # halfway through the cosine part (10 of 20 steps): min + (base - min) / 2
    assert base_lr * got[steps_per_epoch + 10] == pytest.approx((base_lr + min_lr) / 2)
    # after the last of `total` optimizer steps the scheduler holds min_lr, and stays there
    assert [base_lr * f for f in got[total:]] == pytest.approx([min_lr] * 5)
    assert min(base_lr * f for f in got) == pytest.approx(min_lr)


def test_cosine_without_min_lr_follows_half_cosine() -> None:
    settings = SchedulerSettings(name="cosine")
    got = factors(settings, 11, steps_per_epoch=5, total_steps=10)
    assert got == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(11)])


def test_constant_stays_constant() -> None:
    settings = SchedulerSettings(name="constant", milestones=[1, 2], gamma=0.1, min_lr=0.5)
    assert factors(settings, 50, steps_per_epoch=3, total_steps=30) == [1.0] * 50


def test_build_sgd_optimizer() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    settings = OptimizerSettings(name="sgd", lr=0.2, momentum=0.8, nesterov=True, weight_decay=1e-3)
    optimizer = build_optimizer(settings, params)
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    assert group["params"] == params
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.8, True, 1e-3)


def test_build_adamw_optimizer() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    settings = OptimizerSettings(name="adamw", lr=3e-4, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.01)
    optimizer = build_optimizer(settings, params)
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert group["params"] == params
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (3e-4, (0.8, 0.95), 1e-6, 0.01)


@pytest.mark.parametrize(
    "scheduler",
    [
        SchedulerSettings(name="multistep", milestones=[2, 3], gamma=0.2, warmup_epochs=1),
        SchedulerSettings(name="cosine", warmup_epochs=0.5, min_lr=0.01),
        SchedulerSettings(name="constant", warmup_epochs=2),
    ],
    ids=["multistep", "cosine", "constant"],
)
def test_stepping_lambda_lr_gives_the_predicted_lrs(scheduler: SchedulerSettings) -> None:
    steps_per_epoch, total = 4, 20
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = build_optimizer(OptimizerSettings(name="sgd", lr=0.1), [param])
    lr_scheduler = build_scheduler(scheduler, optimizer, steps_per_epoch, total)

    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])  # the lr this optimizer step uses
        param.grad = torch.ones_like(param)
        optimizer.step()
        lr_scheduler.step()

    predicted = [0.1 * lr_factor(scheduler, step, steps_per_epoch, total, 0.1) for step in range(total)]
    assert used == pytest.approx(predicted)
    assert len(set(used)) > 1  # the schedule does move
    if scheduler.name == "cosine":
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # min_lr once all steps are done
