"""The cell comparison's plots, as PNG data: URIs the page embeds.

Built with matplotlib's object-oriented API (no pyplot, no display), as the report's plots. Each
figure is drawn from what compare.json holds for a cell: the mean over seeds as the line, and
with several seeds the mean plus and minus one standard deviation as a band or error bar.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from captioner.compare.records import CellFigures, CellSummary, GradFlow, PositionsScored
from captioner.pages.plots import Plot

COLOURS = {"rnn": "#c44e52", "lstm": "#4c72b0", "gru": "#55a868"}
Cells = Mapping[str, CellFigures]


def validation_plot(cells: Cells, monitor: str) -> Plot:
    keys = list(dict.fromkeys(["val/loss", monitor, "val/cider"]))
    last = max((row["epoch"] for run in cells.values() for row in run.mean.val), default=1)
    figure = Figure(figsize=(5 * len(keys), 3.4), layout="constrained")
    for axes, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        axes.set_xlim(0.5, last + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        for cell, run in cells.items():
            rows = [(row, sd) for row, sd in zip(run.mean.val, run.spread.val) if key in row]
            if rows:
                _line(axes, [row["epoch"] for row, _ in rows], [row[key] for row, _ in rows],
                      [sd[key] for _, sd in rows], cell)
        _finish(axes, "epoch", key)
    return Plot(png(figure), "Validation curves",
                "Which cell learns fastest from the same batches: a lower val/loss and higher "
                f"{' and '.join(k for k in keys if k != 'val/loss')} at the same epoch; with one "
                "epoch there is one point per cell.")


def gradient_flow_plot(cells: Cells, flow: GradFlow) -> Plot:
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    for axes, when, title in zip(panels, ("start", "end"), ("before training", "after training")):
        for cell, run in cells.items():
            norms = run.mean.grad_norm_per_step[when]
            _line(axes, range(1, len(norms) + 1), norms, run.spread.grad_norm_per_step[when],
                  cell, log=True)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(axes, "time step t (the last one predicts the last word)", title)
    panels[0].set_ylabel("mean ‖d loss / d h_t‖")
    return Plot(png(figure), "Gradient flow back through time",
                f"The loss is the last word's ({flow.captions} long validation captions, "
                f"{flow.steps} steps), so every earlier point is gradient carried back through "
                "time: a line falling steeply to the left is a vanishing gradient, the early "
                "words barely trained by it; the flatter the line, the longer the memory.")


def image_gradient_plot(cells: Cells, flow: GradFlow) -> Plot:
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    axes = figure.subplots()
    for cell, run in cells.items():
        norms = run.mean.grad_to_initial_state
        _line(axes, range(1, len(norms) + 1), norms, run.spread.grad_to_initial_state, cell,
              log=True)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("mean ‖d loss_t / d s_0‖")
    _finish(axes, "time step t (word t of the caption)", "")
    return Plot(png(figure), "How much of each word's error reaches the image",
                f"The norm of d(loss of word t)/d(initial state), with the best epoch's weights on "
                f"the same {flow.captions} validation captions: the image enters only the "
                "initial state, so a line that falls to the right means later words are learnt "
                "and predicted with less and less of the image behind them; the LSTM's additive "
                "cell state is the path that should keep it flat.")


def positions_plot(cells: Cells, positions: PositionsScored) -> Plot:
    images = positions.images_by_position
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    getters: tuple[Callable[[CellSummary], Any], ...] = (
        lambda s: s.mention_precision_by_position, lambda s: s.mention_coverage_by_position)
    titles = ("precision of the k-th object named", "images with >= k objects: >= k named")
    ticks = [f"{k}\n({n} img)" for k, n in enumerate(images, start=1)]
    for axes, get, title in zip(panels, getters, titles):
        for offset, (cell, run) in zip(np.linspace(-0.08, 0.08, len(cells)), cells.items()):
            values = get(run.mean)
            xs = np.arange(1, len(values) + 1) + offset  # apart, so error bars do not hide
            axes.errorbar(xs, _floats(values), yerr=_floats(get(run.spread)), marker="o",
                          markersize=4, capsize=3, color=COLOURS.get(cell), label=cell)
        axes.set_xticks(range(1, len(images) + 1), ticks)
        axes.set_ylim(-0.03, 1.03)
        _finish(axes, "k: place in the caption (test images with >= k objects)", title)
    panels[0].set_ylabel("share")
    return Plot(png(figure), "Objects by their place in the caption",
                "Left: of the k-th distinct object each test caption names, the share the image "
                "really holds; right: of the test images holding at least k objects, the share "
                "whose caption names at least k of them. Later objects are carried across more "
                "steps from the image in the initial state, so a cell that forgets falls off to "
                "the right.")


def training_norm_plot(cells: Cells, limit: float) -> Plot:
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    axes = figure.subplots()
    for cell, run in cells.items():
        norms = run.mean.train_grad_norm
        _line(axes, range(1, len(norms) + 1), norms, run.spread.train_grad_norm, cell,
              log=True, marker=len(norms) < 30)
    if limit > 0:
        axes.axhline(limit, color="#333", linestyle="--", label=f"clip at {limit:g}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("global gradient norm")
    _finish(axes, "training step", "")
    return Plot(png(figure), "Gradient norm at every training step, before clipping",
                "Points above the dashed line were clipped (the table gives the share): spikes "
                "there are exploding gradients, which gates do not prevent and clipping does.")


def _line(axes: Axes, xs: Sequence[float], mean: Sequence[float | None],
          spread: Sequence[float | None], cell: str, *, log: bool = False, marker: bool = True) -> None:
    """The mean as a line; mean ± one standard deviation as a band where there is a spread."""
    ys, sd = _floats(mean), _floats(spread)
    xs = list(xs)
    axes.plot(xs, ys, marker="o" if marker else None, markersize=3, color=COLOURS.get(cell),
              label=cell)
    if log:
        axes.set_yscale("log")
    if np.isfinite(sd).any():
        # On a log axis the band stops above zero, where the axis ends.
        low = np.maximum(ys - sd, ys / 100) if log else ys - sd
        axes.fill_between(xs, low, ys + sd, color=COLOURS.get(cell), alpha=0.18, linewidth=0)


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _finish(axes: Axes, xlabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")


def png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return data_uri(buffer.getvalue(), "png")


def data_uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")
