"""The one-cycle learning-rate multiplier: warm-up, peak, annealing, and resumed runs."""

from __future__ import annotations

import pytest
import torch

from captioner.schedule import END, START, one_cycle


def test_warms_up_to_the_peak_then_anneals_to_almost_zero() -> None:
    factor = one_cycle(100, warmup=0.3)
    values = [factor(step) for step in range(101)]
    assert values[0] == pytest.approx(START) and values[30] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values[:30], values[1:31]))  # rising
    assert all(a > b for a, b in zip(values[30:100], values[31:101]))  # falling
    assert values[100] == pytest.approx(END) and max(values) == pytest.approx(1.0)


def test_steps_past_the_end_stay_at_the_floor() -> None:
    assert one_cycle(10, warmup=0.3)(25) == pytest.approx(END)


def test_no_warmup_starts_at_the_peak() -> None:
    assert one_cycle(50, warmup=0.0)(0) == pytest.approx(1.0)


def test_each_parameter_group_follows_its_own_rate() -> None:
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.Adam([{"params": weights[:1], "lr": 1e-3},
                                  {"params": weights[1:], "lr": 1e-2}])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(10, warmup=0.3))
    for _ in range(3):
        optimizer.step()
        schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])


def test_without_annealing_the_peak_holds_after_warmup() -> None:
    factor = one_cycle(100, warmup=0.3, anneal=False)
    assert factor(0) == pytest.approx(START) and factor(15) == one_cycle(100, 0.3)(15)
    assert [factor(step) for step in (30, 60, 100, 150)] == [1.0] * 4


def test_held_peak_then_a_linear_cooldown() -> None:
    factor = one_cycle(100, warmup=0.3, anneal=False, cooldown=0.2)
    assert factor(30) == factor(79) == 1.0  # held from the end of warm-up...
    assert factor(90) == pytest.approx(0.5, abs=0.01)  # ...then straight down over the last 20
    assert factor(100) == pytest.approx(END) and factor(150) == pytest.approx(END)
    assert one_cycle(100, warmup=0.3, anneal=False)(99) == 1.0  # no cooldown: held to the end
