"""The cell comparison's index.html: one self-contained page, its plots embedded as PNG data.

Figures are built with matplotlib's object-oriented API (no pyplot, no display), as in
report_plots, and embedded as data: URIs so the page can be mailed or archived on its own. The
Content-Security-Policy allows nothing but those images and inline styles, and every string from
a config, a dataset or a model passes through `html.escape`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from captioner.data.images import open_rgb
from captioner.errors import CaptionerError
from captioner.evaluation.html import STYLE, figure, section
from captioner.evaluation.plots import Plot

COLOURS = {"rnn": "#c44e52", "lstm": "#4c72b0", "gru": "#55a868"}
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_EXTRA_STYLE = """
.cells td.num { min-width: 90px; } .gateimage { float: right; margin: 0 0 8px 16px; }
#gates figure { clear: both; }
"""


@dataclass(frozen=True)
class GateTrace:
    """The gates of one cell along the greedy caption of one image."""

    cell: str
    image_id: int
    image: Path
    words: list[str]  # the word emitted at each step
    values: dict[str, np.ndarray]  # gate name -> [hidden units, steps], values in [0, 1]


def render_compare_page(result: Mapping[str, Any], gates: Sequence[GateTrace]) -> str:
    """The whole page from what compare.json holds plus the gate values of the gated cells."""
    cells = result["cells"]
    settings = result["settings"]
    plots = [
        _validation_plot(cells, settings["monitor"]),
        _gradient_flow_plot(cells, result["grad_flow"]),
        _training_norm_plot(cells, settings["grad_clip"]),
    ]
    names = ", ".join(cells)
    sections = [
        section("setup", "Setup", _setup(result)),
        section("cells", "Cells side by side", _table(cells, settings)),
        section("plots", "Training and gradient flow", "".join(figure(p) for p in plots)),
        section("gates", "Gates along one caption", _gates(gates, set(cells))),
        section("files", "Data", '<p><a href="compare.json">compare.json</a> holds every number '
                 "on this page; each cell's Lightning log is in <code>&lt;cell&gt;/logs/"
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


# -- text ---------------------------------------------------------------------------------------
def _setup(result: Mapping[str, Any]) -> str:
    s, encoder = result["settings"], result["encoder"]
    items = [
        f"Encoder (frozen, shared by every cell): {escape(encoder['origin'])}; its fc7 features "
        f"were computed once ({result['seconds']['features']:.0f} s, extraction or cache).",
        f"Data: {escape(str(s['dataset']))}, {s['train_images']} training images "
        f"({s['train_captions']} captions), {s['val_images']} validation and {s['test_images']} "
        "test images.",
        f"Same for every cell: seed {s['seed']}, {s['max_epochs']} epoch(s) of batch "
        f"{s['batch_size']} (limit_train_batches {s['limit_train_batches']:g}), embedding "
        f"{s['embed_dim']}, hidden {s['hidden_dim']} x {s['num_layers']} layer(s), dropout "
        f"{s['dropout']:g}, Adam lr {s['lr']:g}, gradient norm clipped at {s['grad_clip']:g}, "
        f"{escape(s['precision'])}.",
        f"Best epoch by {escape(s['monitor'])}; test captions by beam search (beam "
        f"{s['beam_size']}) with the best epoch's weights.",
    ]
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _table(cells: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    def ratio(run: Mapping[str, Any], when: str) -> str:
        norms = run["grad_norm_per_step"][when]
        return f"{norms[0] / norms[-1]:.2g}" if norms and norms[-1] > 0 else "n/a"

    def clip(run: Mapping[str, Any]) -> str:
        value = run["clip_fraction"]
        return "clipping off" if value is None else f"{100 * value:.1f}%"

    rows: list[tuple[str, str, Any]] = [
        ("weight sets", "(W_ih, W_hh, biases) sets: the gates plus the candidate state",
         lambda r: str(r["weight_sets"])),
        ("decoder parameters", "everything trained: embedding, image-to-state layers, "
         "recurrent layer, output layer", lambda r: f"{r['params']:,}"),
        ("recurrent parameters", "the recurrent layer alone",
         lambda r: f"{r['recurrent_params']:,}"),
        ("seconds per epoch", "training only; validation apart",
         lambda r: f"{r['epoch_seconds']:.1f}"),
        ("best epoch", f"by {settings['monitor']}, counted from 1", lambda r: str(r["best_epoch"])),
        *((f"test {_metric_name(k)}", "beam search, best epoch's weights",
           (lambda r, k=k: f"{r['test'][k]:.3f}")) for k in ("bleu1", "bleu2", "bleu3", "bleu4",
                                                             "cider")),
        ("clipping engaged", f"share of training steps whose gradient norm exceeded "
         f"{settings['grad_clip']:g}", clip),
        ("gradient at step 1 / at the last step, start", "before training; see the plot",
         lambda r: ratio(r, "start")),
        ("gradient at step 1 / at the last step, end", "after training",
         lambda r: ratio(r, "end")),
    ]
    head = "".join(f"<th>{escape(cell)}</th>" for cell in cells)
    body = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td class=num>{escape(value(run))}</td>" for run in cells.values())
        + f"<td class=muted>{escape(why)}</td></tr>"
        for name, why, value in rows)
    return f"<table class=cells><tr><th></th>{head}<th></th></tr>{body}</table>"


def _metric_name(key: str) -> str:
    return "CIDEr-D" if key == "cider" else f"BLEU-{key[-1]}"


def _gates(traces: Sequence[GateTrace], cells: set[str]) -> str:
    if not traces:
        return "<p class=muted>Only gated cells (LSTM, GRU) have gates to show.</p>"
    trace = traces[0]
    thumbnail = _thumbnail(trace.image)
    picture = ("" if thumbnail is None else f'<img class=gateimage src="{_data_uri(thumbnail, "png")}" '
               f'alt="test image {trace.image_id}">')
    intro = (f"<p>{picture}Test image #{trace.image_id} "
             f"({escape(trace.image.name)}), captioned greedily by each cell; the columns are the "
             "words each step emitted.")
    if "rnn" in cells:
        intro += " The plain RNN has no gates: its whole state is rewritten at every step."
    figures = "".join(figure(_gate_plot(t)) for t in traces)
    return intro + "</p>" + figures


# -- plots --------------------------------------------------------------------------------------
def _validation_plot(cells: Mapping[str, Mapping[str, Any]], monitor: str) -> Plot:
    keys = list(dict.fromkeys(["val/loss", monitor, "val/cider"]))
    last = max((row["epoch"] for run in cells.values() for row in run["val"]), default=1)
    figure = Figure(figsize=(5 * len(keys), 3.4), layout="constrained")
    for axes, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys):
        axes.set_xlim(0.5, last + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs
        for cell, run in cells.items():
            points = [(row["epoch"], row[key]) for row in run["val"] if key in row]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, marker="o", color=COLOURS.get(cell), label=cell)
        axes.set_xlabel("epoch")
        axes.set_title(key)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return Plot(_png(figure), "Validation curves",
                "Which cell learns fastest from the same batches: a lower val/loss and higher "
                f"{' and '.join(k for k in keys if k != 'val/loss')} at the same epoch; with one "
                "epoch there is one point per cell.")


def _gradient_flow_plot(cells: Mapping[str, Mapping[str, Any]], flow: Mapping[str, Any]) -> Plot:
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    for axes, when, title in zip(panels, ("start", "end"), ("before training", "after training")):
        for cell, run in cells.items():
            norms = run["grad_norm_per_step"][when]
            axes.semilogy(range(1, len(norms) + 1), norms, marker="o", markersize=3,
                          color=COLOURS.get(cell), label=cell)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("time step t (the last one predicts the last word)")
        axes.set_title(title)
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="small")
    panels[0].set_ylabel("mean ‖d loss / d h_t‖")
    return Plot(_png(figure), "Gradient flow back through time",
                f"The loss is the last word's ({flow['captions']} long validation captions, "
                f"{flow['steps']} steps), so every earlier point is gradient carried back through "
                "time: a line falling steeply to the left is a vanishing gradient, the early "
                "words barely trained by it; the flatter the line, the longer the memory.")


def _training_norm_plot(cells: Mapping[str, Mapping[str, Any]], limit: float) -> Plot:
    figure = Figure(figsize=(10, 3.4), layout="constrained")
    axes = figure.subplots()
    for cell, run in cells.items():
        norms = run["train_grad_norm"]
        axes.semilogy(range(1, len(norms) + 1), norms, color=COLOURS.get(cell), label=cell,
                      marker="o" if len(norms) < 30 else None, markersize=3)
    if limit > 0:
        axes.axhline(limit, color="#333", linestyle="--", label=f"clip at {limit:g}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("training step")
    axes.set_ylabel("global gradient norm")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small")
    return Plot(_png(figure), "Gradient norm at every training step, before clipping",
                "Points above the dashed line were clipped (the table gives the share): spikes "
                "there are exploding gradients, which gates do not prevent and clipping does.")


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
    return Plot(_png(figure), f"{trace.cell.upper()} gates: \"{' '.join(trace.words)}\"", look_for)


# -- embedding ----------------------------------------------------------------------------------
def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return _data_uri(buffer.getvalue(), "png")


def _data_uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _thumbnail(path: Path, size: int = 160) -> bytes | None:
    try:
        image = open_rgb(path)
    except CaptionerError:  # the page stands without the picture
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
