"""The one-cycle learning-rate schedule, as a multiplier of each parameter group's rate.

A plain function of the step (for LambdaLR) rather than torch's OneCycleLR: its state is only the
step count, so a run resumed with more epochs stretches the schedule instead of failing with
"Tried to step more than total_steps".
"""

from __future__ import annotations

import math
from collections.abc import Callable

START = 1 / 25  # OneCycleLR's div_factor: the first step runs at lr / 25
END = START / 1e4  # and its final_div_factor: the last at ~0


def one_cycle(total_steps: int, warmup: float, anneal: bool = True,
              cooldown: float = 0.0) -> Callable[[int], float]:
    """Cosine warm-up from START to 1 over `warmup` of `total_steps`, then cosine decay to END
    (or, with anneal=False, the peak held, and over the last `cooldown` of the steps a linear
    decay to END: warmup-stable-decay)."""
    peak = round(warmup * total_steps)
    cool = max(peak, round((1 - cooldown) * total_steps)) if cooldown > 0 else None

    def factor(step: int) -> float:
        if step < peak:
            return START + (1 - START) * (1 - math.cos(math.pi * step / peak)) / 2
        if not anneal:
            if cool is None or step < cool:
                return 1.0
            return max(END, 1 - (1 - END) * (step - cool) / max(1, total_steps - cool))
        t = min(1.0, (step - peak) / max(1, total_steps - peak))
        return END + (1 - END) * (1 + math.cos(math.pi * t)) / 2

    return factor
