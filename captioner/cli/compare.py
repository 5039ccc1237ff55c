"""`captioner compare`: the same decoder trained with each recurrent cell, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import at_least, command, config_arguments, random_seed
from captioner.compare.records import CompareResult

MAX_SEEDS = 100  # each seed trains every cell again


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "compare", "train the same decoder with each recurrent cell on the same features "
                                "and compare them (parameters, speed, scores, gradient flow, gates)", [
        "captioner compare --out compare/",
        "captioner compare --cells rnn lstm --max-epochs 3 --out compare/",
        "captioner compare --seeds 4 --out compare/ data.shapes.max_objects=5 data.max_length=25 "
        "eval.max_length=25",
        "captioner compare --encoder-from runs/shapes/checkpoints/best.ckpt --out compare/",
    ])
    p.add_argument("--cells", nargs="+", choices=("rnn", "lstm", "gru"), default=["rnn", "lstm", "gru"],
                   help="the cells to train")
    p.add_argument("--max-epochs", type=at_least(1), help="epochs per cell (default: trainer.max_epochs)")
    p.add_argument("--seed", type=random_seed,
                   help="seed of every cell; with --seeds, the first (default: trainer.seed)")
    p.add_argument("--seeds", type=at_least(1, MAX_SEEDS), default=1, metavar="N",
                   help=f"train each cell N times (up to {MAX_SEEDS}), with seeds --seed, "
                        "--seed + 1, ...; figures become "
                        "means ± standard deviations, and the page says which differences are "
                        "real (default: 1)")
    p.add_argument("--encoder-from", type=Path, metavar="CKPT_OR_PTH",
                   help="the frozen encoder: a checkpoint's, or an encoder file from captioner "
                        "pretrain (default: the latest run's; without a run, the config's)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for compare.json and index.html")
    config_arguments(p, "data.batch_size=64 decoder.hidden_dim=256")


def run(args: argparse.Namespace) -> int:
    from captioner.cli.settings import load

    overrides = list(args.overrides)
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    if args.seed is not None:
        overrides.append(f"trainer.seed={args.seed}")
    config = load(args.config, overrides)

    from captioner.compare.cells import compare

    result = compare(config, args.cells, args.out, encoder_from=args.encoder_from, seeds=args.seeds)
    _print_summary(result)
    print(f"report: {(args.out / 'index.html').resolve()}")
    return 0


def _print_summary(result: CompareResult) -> None:
    """The headline figures, means over seeds (± standard deviation with several seeds)."""
    def num(value: float | None, spread: float | None = None, fmt: str = ".3f") -> str:
        text = "n/a" if value is None else f"{value:{fmt}}"
        return text + (f"±{spread:{fmt}}" if spread else "")

    print(f"{'cell':6}{'params':>12}{'recurrent':>12}{'s/epoch':>9}{'BLEU-4':>14}{'CIDEr-D':>14}"
          f"{'clipped':>9}{'grad t1/tT start':>18}{'end':>9}")
    for cell, figures in result.cells.items():
        run, spread = figures.mean, figures.spread
        clipped = "off" if run.clip_fraction is None else f"{100 * run.clip_fraction:.1f}%"
        ratios = [num(run.grad_first_over_last[when], fmt=".2g") for when in ("start", "end")]
        print(f"{cell:6}{run.params:>12,}{run.recurrent_params:>12,}{run.epoch_seconds:>9.1f}"
              f"{num(run.test['bleu4'], spread.test['bleu4']):>14}"
              f"{num(run.test['cider'], spread.test['cider']):>14}{clipped:>9}"
              f"{ratios[0]:>18}{ratios[1]:>9}")
    for cell, figures in result.cells.items():
        if figures.mean.mention_precision_by_position is not None:
            by_position = zip(figures.mean.mention_precision_by_position,
                              figures.spread.mention_precision_by_position or [])
            print(f"{cell}: precision of the 1st, 2nd, ... object named: "
                  + ", ".join(num(value, spread) for value, spread in by_position))
    real = [d for d in result.differences if d.real]
    print(f"real differences ({len(result.settings.seeds)} seeds): "
          + ("; ".join(f"{d.figure}: {d.higher} > {d.lower}" for d in real) or "none"))
