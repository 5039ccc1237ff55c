"""The cell comparison's index.html: one self-contained page, its plots embedded as PNG data.

The plots (plots.py) are embedded as data: URIs so the page can be mailed or archived on its
own. The Content-Security-Policy allows nothing but those images and inline styles, and every
string from a config, a dataset or a model passes through `html.escape`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from captioner.compare.plots import (
    data_uri,
    gradient_flow_plot,
    image_gradient_plot,
    png,
    positions_plot,
    training_norm_plot,
    validation_plot,
)
from captioner.compare.positions import ordinal
from captioner.compare.records import CellFigures, CellSummary, CompareResult
from captioner.compare.seeds import REAL_CHANCE, Difference, separation_chance
from captioner.data.images import open_rgb
from captioner.errors import CaptionerError
from captioner.pages.html import HEADLINE, STYLE, figure, section
from captioner.pages.plots import Plot

_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_EXTRA_STYLE = """
.cells td.num { min-width: 90px; } .gateimage { float: right; margin: 0 0 8px 16px; }
#gates figure { clear: both; } .real { color: #1e7b34; font-weight: 600; }
"""


@dataclass(frozen=True)
class GateTrace:
    """The gates of one cell along the greedy caption of one image."""

    cell: str
    image_id: int
    image: Path
    words: list[str]  # the word emitted at each step
    values: dict[str, np.ndarray]  # gate name -> [hidden units, steps], values in [0, 1]


def render_compare_page(result: CompareResult, gates: Sequence[GateTrace]) -> str:
    """The whole page from what compare.json holds plus the gate values of the gated cells."""
    cells, settings = result.cells, result.settings
    names = ", ".join(cells)
    logs = "&lt;cell&gt;/logs" if len(settings.seeds) == 1 else "&lt;cell&gt;/seed-&lt;seed&gt;/logs"
    sections = [
        section("setup", "Setup", _setup(result)),
        section("cells", "Cells side by side",
                _table(cells, monitor=settings.monitor, grad_clip=settings.grad_clip)),
        section("seeds", "Which differences are real",
                _differences(len(settings.seeds), result.differences)),
        section("plots", "Training, gradient flow and memory",
                "".join(figure(p) for p in _plots(result))),
        section("gates", "Gates along one caption", _gates(gates, set(cells))),
        section("files", "Data", '<p><a href="compare.json">compare.json</a> holds every number '
                 f"on this page, each seed's run apart; each Lightning log is in <code>{logs}/"
                 "metrics.csv</code>.</p>"),
    ]
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        '<meta name=viewport content="width=device-width, initial-scale=1">\n'
        f"<title>Recurrent cells compared: {escape(names)}</title>\n"
        f"<style>{STYLE}{_EXTRA_STYLE}</style></head>\n<body>\n"
        f"<h1>Recurrent cells compared: {escape(names)}</h1>\n"
        + "\n".join(sections) + "\n</body></html>\n"
    )


def _plots(result: CompareResult) -> list[Plot]:
    cells, settings, flow = result.cells, result.settings, result.grad_flow
    plots = [validation_plot(cells, settings.monitor), gradient_flow_plot(cells, flow),
             image_gradient_plot(cells, flow)]
    if result.positions is not None:
        plots.append(positions_plot(cells, result.positions))
    return [*plots, training_norm_plot(cells, settings.grad_clip)]


# -- text ---------------------------------------------------------------------------------------
def _setup(result: CompareResult) -> str:
    s, encoder = result.settings, result.encoder
    seeds = s.seeds
    seeding = (f"seed {seeds[0]}" if len(seeds) == 1 else
               f"seeds {', '.join(map(str, seeds))} (each cell trained once per seed on the same "
               "data and features; every figure is the mean over seeds ± the standard deviation, "
               "the gates are the first seed's)")
    crowd = ("" if s.max_objects in (None, 3) else
             f" Scenes of up to {s.max_objects} objects (data.shapes.max_objects).")
    positions = result.positions
    objects = ("No instances files: the objects by position are not scored." if positions is None
               else f"Objects by position: {escape(positions.objects)} objects of the "
                    f"{escape(positions.split)} images, from the instances files.")
    items = [
        f"Encoder (frozen, shared by every cell): {escape(encoder.origin)}; its fc7 features "
        f"were computed once ({result.seconds.features:.0f} s, extraction or cache).",
        f"Data: {escape(str(s.dataset))}, {s.train_images} training images "
        f"({s.train_captions} captions), {s.val_images} validation and {s.test_images} "
        f"test images.{crowd} {objects}",
        f"Same for every cell: {seeding}, {s.max_epochs} epoch(s) of batch "
        f"{s.batch_size} (limit_train_batches {s.limit_train_batches:g}), embedding "
        f"{s.embed_dim}, hidden {s.hidden_dim} x {s.num_layers} layer(s), dropout "
        f"{s.dropout:g}, Adam lr {s.lr:g}, gradient norm clipped at {s.grad_clip:g}, "
        f"{escape(s.precision)}.",
        f"Best epoch by {escape(s.monitor)}; test captions by beam search (beam "
        f"{s.beam_size}) with the best epoch's weights.",
    ]
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


Getter = Callable[[CellSummary], Any]


def _table(cells: Mapping[str, CellFigures], *, monitor: str, grad_clip: float) -> str:
    """One row per figure: each cell's mean, ± its spread over seeds where there is one."""
    def cell_text(run: CellFigures, get: Getter, fmt: str) -> str:
        value = get(run.mean)
        if value is None:
            return "n/a"
        spread = get(run.spread)
        # A mean over fewer seeds than ran (a place no caption of some seeds reached) says so.
        runs = [r.summary for r in run.runs]
        counted = sum(get(r) is not None for r in runs)
        fewer = f" ({counted} of {len(runs)} seeds)" if 1 < len(runs) and counted < len(runs) else ""
        return f"{value:{fmt}}" + ("" if not spread else f" ± {spread:{fmt}}") + fewer

    head = "".join(f"<th>{escape(cell)}</th>" for cell in cells)
    body = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td class=num>{escape(cell_text(run, get, fmt))}</td>" for run in cells.values())
        + f"<td class=muted>{escape(why)}</td></tr>"
        for name, why, get, fmt in _rows(cells, monitor, grad_clip)
        if any(get(run.mean) is not None for run in cells.values()))
    return f"<table class=cells><tr><th></th>{head}<th></th></tr>{body}</table>"


def _rows(cells: Mapping[str, CellFigures], monitor: str,
          limit: float) -> list[tuple[str, str, Getter, str]]:
    """(name, what it means, how to read it from a cell's figures, number format)."""
    positions = max(len(run.mean.mention_precision_by_position or []) for run in cells.values())
    return [
        ("weight sets", "(W_ih, W_hh, biases) sets: the gates plus the candidate state",
         lambda r: r.weight_sets, "d"),
        ("decoder parameters", "everything trained: embedding, image-to-state layers, "
         "recurrent layer, output layer", lambda r: r.params, ",d"),
        ("recurrent parameters", "the recurrent layer alone", lambda r: r.recurrent_params, ",d"),
        ("seconds per epoch", "training only; validation apart", lambda r: r.epoch_seconds, ".1f"),
        ("best epoch", f"by {monitor}, counted from 1", lambda r: r.best_epoch, ".3g"),
        *((f"test {HEADLINE[k]}", "beam search, best epoch's weights",
           (lambda r, k=k: r.test[k]), ".3f") for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider")),
        *((f"{ordinal(k + 1)} object named: precision", "share of the captions' k-th named objects "
           "that the image holds", (lambda r, k=k: _at(r.mention_precision_by_position, k)), ".3f")
          for k in range(positions)),
        ("clipping engaged", f"share of training steps whose gradient norm exceeded {limit:g}",
         lambda r: r.clip_fraction, ".1%"),
        ("gradient at step 1 / at the last step, start", "before training; see the plot",
         lambda r: r.grad_first_over_last["start"], ".2g"),
        ("gradient at step 1 / at the last step, end", "after training",
         lambda r: r.grad_first_over_last["end"], ".2g"),
    ]


def _at(values: Sequence[Any] | None, k: int) -> Any:
    return None if values is None else values[k]


def _differences(seeds: int, differences: Sequence[Difference]) -> str:
    chance = separation_chance(seeds, seeds)
    if seeds == 1:
        return ("<p>One seed per cell: a difference between cells may be the seed's alone. "
                "<code>captioner compare --seeds N</code> trains every cell N times; with 4 or "
                "more seeds a difference can be called real here.</p>")
    intro = (f"<p>Each figure in each of the {seeds} seeds' runs. A difference is called "
             "<span class=real>real</span> when every seed of one cell lies above every seed of "
             f"the other: were the cells alike, that happens by chance 1 time in {1 / chance:.0f}"
             f"{' (too often to call it real: use 4 or more seeds)' if chance > REAL_CHANCE else ''}"
             ". Otherwise the seeds overlap and the difference is not shown to be real. A place in "
             "the caption that no caption of some seed reached is judged on the other seeds only, "
             "and fewer seeds fall apart by chance more often.</p>")
    rows = "".join(
        f"<tr><th>{escape(d.figure)}</th><td>{escape(_order(d))}"
        f"</td><td class=num>{d.higher_mean:.3f} vs {d.lower_mean:.3f}</td><td>"
        + _verdict(d) + "</td></tr>"
        for d in differences)
    return intro + f"<table>{rows}</table>"


def _order(d: Difference) -> str:
    if d.higher_mean == d.lower_mean:
        return f"{d.higher} level with {d.lower}"
    return f"{d.higher} above {d.lower}"


def _verdict(d: Difference) -> str:
    if d.real:
        return "<span class=real>real</span>"
    if d.separated:
        return f"every seed apart, but by chance 1 time in {1 / d.chance:.0f}: not rare enough"
    return "seeds overlap"


def _gates(traces: Sequence[GateTrace], cells: set[str]) -> str:
    if not traces:
        return "<p class=muted>Only gated cells (LSTM, GRU) have gates to show.</p>"
    trace = traces[0]
    thumbnail = _thumbnail(trace.image)
    picture = ("" if thumbnail is None else f'<img class=gateimage src="{data_uri(thumbnail, "png")}" '
               f'alt="test image {trace.image_id}">')
    intro = (f"<p>{picture}Test image #{trace.image_id} "
             f"({escape(trace.image.name)}), captioned greedily by each cell; the columns are the "
             "words each step emitted.")
    if "rnn" in cells:
        intro += " The plain RNN has no gates: its whole state is rewritten at every step."
    figures = "".join(figure(_gate_plot(t)) for t in traces)
    return intro + "</p>" + figures


# -- plots ----------------------------------------------------------------------------------------
def _gate_plot(trace: GateTrace) -> Plot:
    names = list(trace.values)
    figure = Figure(figsize=(4.2 * len(names) + 0.8, 4.4), layout="constrained")
    image = None
    for axes, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names):
        values = trace.values[name]
        # Units sorted by their mean, so that always-open, always-closed and word-driven units
        # form bands instead of noise.
        values = values[np.argsort(-values.mean(axis=1), kind="stable")]
        image = axes.imshow(values, aspect="auto", interpolation="nearest", vmin=0, vmax=1,
                            cmap="viridis")
        axes.set_xticks(range(len(trace.words)), trace.words, rotation=60, ha="right",
                        fontsize="small")
        axes.set_ylabel("hidden units, by mean value")
        axes.set_title(f"{name} gate (mean {values.mean():.2f})")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="gate value")
    look_for = {
        "lstm": "A forget gate near 1 (yellow) keeps that unit's cell state, and so its gradient, "
                "across steps; a column that changes colour marks a word the units react to.",
        "gru": "An update gate near 1 (yellow) keeps the unit's previous state; a reset gate "
               "near 0 lets the unit ignore its past when computing the new candidate.",
    }.get(trace.cell, "Gate values along the caption.")
    return Plot(png(figure), f"{trace.cell.upper()} gates: \"{' '.join(trace.words)}\"", look_for)


# -- embedding ----------------------------------------------------------------------------------
def _thumbnail(path: Path, size: int = 160) -> bytes | None:
    try:
        image = open_rgb(path)
    except CaptionerError:  # the page stands without the picture
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
