"""`captioner compare`: the same decoder trained with each recurrent cell on the same features.

Why an LSTM or a GRU rather than a plain RNN, shown on this project's own runs: every cell gets
the same data, seed, epochs and fc7 features (extracted once, from one frozen encoder), and the
comparison records parameters, speed, validation curves and test scores, plus what the choice is
about: how much gradient reaches early time steps, how often clipping had to engage, and what
the gates do along a caption. On data with instances files it also asks where a cell's memory
gives out: how well the 1st, 2nd, 3rd... object a caption names is right, and how much of each
word's error reaches the initial state, the one place the image enters. With several seeds every
cell trains once per seed on the same features, and every figure is a mean with its spread.
Results go to DIR/compare.json and the page DIR/index.html.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from captioner.compare.encoders import cell_config, config_encoder, encoder_checkpoint, source_encoder
from captioner.compare.page import GateTrace, render_compare_page
from captioner.compare.positions import ordinal, score_positions
from captioner.compare.records import (
    CellFigures,
    CellSummary,
    CompareResult,
    CompareSettings,
    EncoderUsed,
    GradFlow,
    PositionsScored,
    SeedRun,
    Timing,
)
from captioner.compare.seeds import differences, mean_and_spread
from captioner.compare.shared import Shared, share
from captioner.compare.training import TEST_METRICS, run_cell
from captioner.config import Config, from_dict, to_dict
from captioner.data.prepare import build_vocab, prepare
from captioner.errors import CaptionerError
from captioner.model.encoder import VGGEncoder
from captioner.pages.html import HEADLINE
from captioner.util.atomic import write_json, write_text
from captioner.util.console import say
from captioner.util.hardware import resolve_precision
from captioner.util.paths import check_out_dir, claim_out_dir, seal_out_dir

CELLS = ("rnn", "lstm", "gru")
GRAD_LOSS = ("cross-entropy of each caption's last target word only, so that at earlier steps "
             "d(loss)/d(h_t) is purely the gradient carried back through time")
INITIAL_STATE_LOSS = ("cross-entropy of word t alone, differentiated with respect to the whole "
                      "initial state the image sets (h0 of every layer, and the LSTM's c0)")


def seeds_of(config: Config, count: int) -> list[int]:
    """trainer.seed and the `count - 1` seeds after it."""
    if count < 1:
        raise CaptionerError(f"--seeds: train each cell at least once (got {count})")
    return [config.trainer.seed + i for i in range(count)]


def run_seeds(config: Config, shared: Shared, encoder: VGGEncoder, seeds: Sequence[int],
              folder: Path) -> tuple[CellFigures, GateTrace | None]:
    """One cell trained once per seed: each figure's mean, its spread, every run; the gates of
    the first seed's run."""
    runs = []
    for seed in seeds:
        seeded = from_dict(to_dict(config))
        seeded.trainer.seed = seed
        runs.append(run_cell(seeded, shared, encoder, folder if len(seeds) == 1 else folder / f"seed-{seed}"))
    summaries = [run.summary for run in runs]
    # One caption's gates cannot be averaged: the first seed's are kept.
    mean, spread = mean_and_spread([replace(s, gates=None).to_json() for s in summaries])
    figures = CellFigures(replace(CellSummary.from_json(mean), gates=summaries[0].gates),
                          CellSummary.from_json(spread), list(seeds),
                          [SeedRun(seed, s) for seed, s in zip(seeds, summaries)])
    return figures, runs[0].gates


def judged_figures(cells: Mapping[str, CellFigures]) -> dict[str, dict[str, list[Any]]]:
    """figure -> cell -> its value in each seed's run: the test scores and the objects by position."""
    figures: dict[str, dict[str, list[Any]]] = {}
    for metric in TEST_METRICS:
        figures[f"test {HEADLINE[metric]}"] = {
            cell: [r.summary.test[metric] for r in run.runs] for cell, run in cells.items()}
    for name, get in (("precision", _precision), ("coverage", _coverage)):
        positions = max(len(get(run.mean) or []) for run in cells.values())
        for k in range(positions):
            figures[f"{ordinal(k + 1)} object named: {name}"] = {
                cell: [get(r.summary)[k] for r in run.runs]
                for cell, run in cells.items() if get(run.mean)}
    return figures


def _precision(summary: CellSummary) -> list[Any] | None:
    return summary.mention_precision_by_position


def _coverage(summary: CellSummary) -> list[Any] | None:
    return summary.mention_coverage_by_position


def compare(config: Config, cells: Sequence[str], out_dir: Path, *,
            encoder_from: Path | None = None, seeds: int = 1) -> CompareResult:
    """Train `cells` (each once per seed) on shared features and write out_dir/compare.json and
    out_dir/index.html."""
    started = time.perf_counter()
    cells = list(dict.fromkeys(cells))
    unknown = [c for c in cells if c not in CELLS]
    if not cells or unknown:
        raise CaptionerError(f"--cells: choose among {', '.join(CELLS)} (got {', '.join(cells)})")
    seed_list = seeds_of(config, seeds)
    writes = ("compare.json", "index.html", *cells)
    check_out_dir(out_dir, writes, command="compare")
    checkpoint = encoder_checkpoint(config, encoder_from)
    source = source_encoder(checkpoint, config) if checkpoint is not None else None
    data = prepare(config)
    source = source or config_encoder(config, data)
    say(f"encoder: {source.origin}")
    base = cell_config(config, config.decoder.cell, source)
    vocab = build_vocab(data, base.data.min_count)
    clock = time.perf_counter()
    shared = share(base, data, source.encoder, vocab)
    feature_seconds = time.perf_counter() - clock  # extraction, or reading the cache
    summaries: dict[str, CellFigures] = {}
    gates: list[GateTrace] = []
    claim_out_dir(out_dir, writes, command="compare")
    for n, cell in enumerate(cells, start=1):
        say(f"training the {cell} decoder ({n}/{len(cells)}, {len(seed_list)} seed(s))")
        summaries[cell], trace = run_seeds(cell_config(config, cell, source), shared, source.encoder,
                                           seed_list, out_dir / cell)
        gates += [trace] if trace else []
    result = CompareResult(
        cells=summaries,
        settings=_settings(base, cells, shared, seed_list),
        encoder=EncoderUsed(source.origin, None if checkpoint is None else str(checkpoint),
                            source.arch, source.image_size, frozen=True,
                            params=sum(p.numel() for p in source.encoder.parameters())),
        grad_flow=GradFlow(GRAD_LOSS, INITIAL_STATE_LOSS, "val", len(shared.grad_ids),
                           shared.grad_ids.shape[1] - 1),
        positions=_positions(shared),
        differences=differences(judged_figures(summaries)),
        seconds=Timing(feature_seconds, time.perf_counter() - started),
    )
    write_json(out_dir / "compare.json", result.to_json())
    write_text(out_dir / "index.html", render_compare_page(result, gates))
    seal_out_dir(out_dir, writes, command="compare")
    return result


def _positions(shared: Shared) -> PositionsScored | None:
    """What the per-position figures were scored on; None without instances files."""
    if shared.objects is None:
        return None
    # Captions that name nothing: the count of images holding each number of objects.
    images = score_positions({r.image_id: [] for r in shared.test_records}, shared.objects).images
    return PositionsScored("test", shared.objects.kind, images)


def _settings(config: Config, cells: list[str], shared: Shared, seeds: list[int]) -> CompareSettings:
    d, o, t = config.decoder, config.optim, config.trainer
    shapes = config.data.dataset == "shapes" and not config.data.root
    return CompareSettings(
        cells=cells, dataset=config.data.dataset, max_epochs=t.max_epochs, seed=t.seed,
        seeds=seeds, max_objects=config.data.shapes.max_objects if shapes else None,
        train_images=len(shared.train_set.records), train_captions=len(shared.train_set),
        val_images=len(shared.val_set.records),
        test_images=len(shared.test_records), batch_size=config.data.batch_size,
        embed_dim=d.embed_dim, hidden_dim=d.hidden_dim, num_layers=d.num_layers,
        dropout=d.dropout, lr=o.lr, grad_clip=o.grad_clip, monitor=t.monitor,
        beam_size=config.eval.beam_size, precision=resolve_precision(config),
        limit_train_batches=t.limit_train_batches,
    )
