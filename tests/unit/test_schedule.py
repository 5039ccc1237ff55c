"""Learning-rate multipliers: the one-cycle schedule of pretraining and the decoder's cooldown."""

from __future__ import annotations

import pytest
import torch

from captioner.training.schedule import END, START, cooldown, one_cycle


def test_warms_up_to_the_peak_then_anneals_to_almost_zero() -> None:
    factor = one_cycle(100, warmup=0.3)
    assert factor(0) == pytest.approx(START)
    assert factor(30) == pytest.approx(1.0)
    rising = [factor(s) for s in range(31)]
    falling = [factor(s) for s in range(30, 100)]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)
    assert factor(100) == pytest.approx(END)
    # a run resumed with more epochs asks beyond the end: stays at the floor, no error
    assert one_cycle(10, warmup=0.3)(25) == pytest.approx(END)


def test_no_warmup_starts_at_the_peak() -> None:
    assert one_cycle(50, warmup=0.0)(0) == pytest.approx(1.0)


def test_drives_torch_lambdalr() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(10, warmup=0.3))
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(START) and max(rates) == pytest.approx(rates[3])


def test_cooldown_holds_then_decays_linearly() -> None:
    factor = cooldown(100, 0.2)
    assert [factor(s) for s in (0, 50, 79)] == [1.0, 1.0, 1.0]
    assert factor(90) == pytest.approx(0.5, abs=0.01)
    assert factor(100) == pytest.approx(END) and factor(150) == pytest.approx(END)
