"""The comparison over seeds: every figure's mean and spread, and which differences are real.

A cell trained with N seeds gives N values of each figure. The mean keeps the figure's shape (a
number, a list over steps or positions, a mapping), the spread is the sample standard deviation
in the same shape. Whether two cells differ is judged without assuming a distribution: when
every seed of one cell beats every seed of the other, and the cells were in truth alike (their
seeds' values exchangeable), that complete separation happens by chance 2 / C(n + m, n) of the
time (the most extreme outcome of a two-sided Mann-Whitney test): 1 in 10 with 3 seeds each,
1 in 35 with 4, 1 in 126 with 5.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Any

# Judged differences whose separation chance is at most this are called real.
REAL_CHANCE = 0.05


def mean_and_spread(values: Sequence[Any]) -> tuple[Any, Any]:
    """(mean, sample standard deviation) of one figure over runs, both in the figure's shape.

    Mappings are combined key by key and lists element by element (runs of one comparison share
    their epochs, steps and positions). Numbers missing (None) in some runs are averaged over the
    others; the spread is None below two numbers. Values that are not numbers are kept when every
    run agrees on them, else None.
    """
    first = values[0]
    if isinstance(first, Mapping):
        pairs = {key: mean_and_spread([v[key] for v in values]) for key in first}
        return {k: m for k, (m, _) in pairs.items()}, {k: s for k, (_, s) in pairs.items()}
    if isinstance(first, list):
        if len({len(v) for v in values}) > 1:
            raise ValueError("runs disagree on the length of a figure")
        pairs_list = [mean_and_spread(column) for column in zip(*values)]
        return [m for m, _ in pairs_list], [s for _, s in pairs_list]
    numbers = [v for v in values if _is_number(v)]
    if not numbers:
        return (first if all(v == first for v in values) else None), None
    if all(v == first for v in values):  # params, epochs: the same for every seed, type kept
        return first, (0.0 if len(numbers) > 1 else None)
    return statistics.fmean(numbers), (statistics.stdev(numbers) if len(numbers) > 1 else None)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def separation_chance(n: int, m: int) -> float:
    """The chance that n and m exchangeable values fall completely apart, either way round."""
    return min(1.0, 2 / comb(n + m, n))


@dataclass(frozen=True)
class Difference:
    figure: str  # e.g. "test bleu4", "mention precision, position 2"
    higher: str  # the cell with the higher mean
    lower: str
    higher_mean: float
    lower_mean: float
    separated: bool  # every seed of `higher` above every seed of `lower`
    chance: float  # of a complete separation if the cells were alike

    @property
    def real(self) -> bool:
        return self.separated and self.chance <= REAL_CHANCE


def differences(figures: Mapping[str, Mapping[str, Sequence[float | None]]]) -> list[Difference]:
    """Every pair of cells on every figure: figure -> cell -> one value per seed (None: none)."""
    found = []
    for figure, by_cell in figures.items():
        for a, b in combinations(by_cell, 2):
            xs = [x for x in by_cell[a] if x is not None]
            ys = [y for y in by_cell[b] if y is not None]
            if not xs or not ys:
                continue
            if statistics.fmean(xs) < statistics.fmean(ys):
                (a, xs), (b, ys) = (b, ys), (a, xs)
            found.append(Difference(figure, a, b, statistics.fmean(xs), statistics.fmean(ys),
                                    min(xs) > max(ys), separation_chance(len(xs), len(ys))))
    return found
