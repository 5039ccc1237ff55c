"""Learning-rate schedules, as multipliers of each parameter group's rate for LambdaLR.

Plain functions of the step rather than torch's OneCycleLR: their state is only the step count,
so a run resumed with more epochs stretches the schedule instead of failing with "Tried to step
more than total_steps".
"""

from __future__ import annotations

import math
from collections.abc import Callable

START = 1 / 25  # OneCycleLR's div_factor: the first step runs at lr / 25
END = START / 1e4  # and its final_div_factor: the last at ~0


def one_cycle(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Cosine warm-up from START to 1 over `warmup` of `total_steps`, then cosine decay to END."""
    peak = round(warmup * total_steps)

    def factor(step: int) -> float:
        if step < peak:
            return START + (1 - START) * (1 - math.cos(math.pi * step / peak)) / 2
        t = min(1.0, (step - peak) / max(1, total_steps - peak))
        return END + (1 - END) * (1 + math.cos(math.pi * t)) / 2

    return factor


def cooldown(total_steps: int, fraction: float) -> Callable[[int], float]:
    """The full rate, then over the last `fraction` of `total_steps` a linear decay to END."""
    start = round((1 - fraction) * total_steps)

    def factor(step: int) -> float:
        if step < start:
            return 1.0
        return max(END, 1 - (1 - END) * (step - start) / max(1, total_steps - start))

    return factor
