"""The plots the pages show: learning curves from the training log, score distributions.

Figures are built with matplotlib's object-oriented API (Figure + Agg canvas), never pyplot, so
the report neither needs a display nor changes the backend of a program that imports it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from captioner.util.atomic import atomic_path

Series = list[tuple[float, float]]


@dataclass(frozen=True)
class Plot:
    """A PNG in the report folder and the one line that tells a reader what to look for."""

    file: str
    title: str
    look_for: str


def read_training_log(metrics_csv: Path) -> dict[str, dict[str, Series]]:
    """Lightning CSVLogger columns as (x, y) series: losses by step, other metrics by epoch.

    Each row of metrics.csv holds only what was logged at that moment, so every column has
    empty cells; those, and NaN or infinite values, are skipped.
    """
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0].keys() if rows else []) if c and c not in ("epoch", "step")]
    losses = {c: _series(rows, c, ("step", "epoch")) for c in columns if "loss" in c}
    scores = [c for c in columns if c.startswith("val/") and "loss" not in c and c not in _NOT_SCORES]
    return {"loss": _non_empty(losses),
            # CIDEr-D runs to 10, the others to 1: on one axis the others would lie flat.
            "scores": _non_empty({c: _by_epoch(rows, c) for c in scores if c != _CIDER}),
            "cider": _non_empty({c: _by_epoch(rows, c) for c in scores if c == _CIDER})}


_CIDER = "val/cider"
_NOT_SCORES = frozenset({"val/images"})  # a count, not a score
_TITLES = {"loss": "losses", "scores": "validation scores (0-1)", "cider": "validation CIDEr-D (0-10)"}


def plot_learning_curves(curves: Mapping[str, Mapping[str, Series]], png: Path) -> bool:
    """Losses beside validation metrics; False (and no file) when the log holds neither."""
    panels = [(name, series) for name, series in curves.items() if series]
    if not panels:
        return False
    figure = Figure(figsize=(5 * len(panels), 3.6), layout="constrained")
    for axes, (name, series) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels,
                                    strict=True):
        for column, points in series.items():
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3,
                      label=column)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("step" if name == "loss" else "epoch")
        axes.set_title(_TITLES[name])
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    _save(figure, png)
    return True


def plot_score_distribution(
    cider: Sequence[float], corpus_cider: float, prediction_lengths: Sequence[int],
    reference_lengths: Sequence[int], png: Path,
) -> None:
    """Per-image CIDEr-D histogram; caption lengths of predictions against references."""
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    scores, lengths = figure.subplots(1, 2)
    scores.hist(cider, bins=30, color="#4c72b0")
    scores.axvline(corpus_cider, color="#c44e52", linestyle="--",
                   label=f"corpus CIDEr-D {corpus_cider:.3f}")
    scores.set_xlabel("per-image CIDEr-D")
    scores.set_ylabel("images")
    scores.yaxis.set_major_locator(MaxNLocator(integer=True))
    scores.legend(fontsize="small")
    top = max([*prediction_lengths, *reference_lengths, 1])
    bins = [b - 0.5 for b in range(0, top + 2)]
    lengths.hist(reference_lengths, bins=bins, density=True, alpha=0.5, label="references",
                 color="#55a868")
    lengths.hist(prediction_lengths, bins=bins, density=True, alpha=0.5, label="predictions",
                 color="#4c72b0")
    lengths.xaxis.set_major_locator(MaxNLocator(integer=True))
    lengths.set_xlabel("caption length (tokens)")
    lengths.set_ylabel("fraction of captions")
    lengths.legend(fontsize="small")
    for axes in (scores, lengths):
        axes.grid(alpha=0.3)
    _save(figure, png)


def _series(rows: list[dict[str, str]], column: str, x_columns: tuple[str, ...]) -> Series:
    points = []
    for index, row in enumerate(rows):
        y = _number(row.get(column))
        if y is None:
            continue
        xs = (_number(row.get(x)) for x in x_columns)
        x = next((v for v in xs if v is not None), float(index))
        points.append((x, y))
    return points


def _by_epoch(rows: list[dict[str, str]], column: str) -> Series:
    """A validation metric by epoch, counted from 1 as the training log says it ("epoch 1/2";
    Lightning's column counts from 0)."""
    if not any(_number(row.get("epoch")) is not None for row in rows):
        return _series(rows, column, ("step",))
    return [(x + 1, y) for x, y in _series(rows, column, ("epoch",))]


def _non_empty(series: dict[str, Series]) -> dict[str, Series]:
    return {column: points for column, points in series.items() if points}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _save(figure: Figure, png: Path) -> None:
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
