"""`captioner compare`: the same decoder trained with each recurrent cell, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import at_least, command, config_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "compare", "train the same decoder with each recurrent cell on the same features "
                                "and compare them (parameters, speed, scores, gradient flow, gates)", [
        "captioner compare --out compare/",
        "captioner compare --cells rnn lstm --max-epochs 3 --out compare/",
        "captioner compare --encoder-from runs/shapes/checkpoints/best.ckpt --out compare/",
    ])
    p.add_argument("--cells", nargs="+", choices=("rnn", "lstm", "gru"), default=["rnn", "lstm", "gru"],
                   help="the cells to train")
    p.add_argument("--max-epochs", type=at_least(1), help="epochs per cell (default: trainer.max_epochs)")
    p.add_argument("--seed", type=int, help="seed of every cell (default: trainer.seed)")
    p.add_argument("--encoder-from", type=Path, metavar="CKPT_OR_PTH",
                   help="the frozen encoder: a checkpoint's, or an encoder file from captioner "
                        "pretrain (default: the latest run's; without a run, the config's)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for compare.json and index.html")
    config_arguments(p, "data.batch_size=64 decoder.hidden_dim=256")


def run(args: argparse.Namespace) -> int:
    from captioner.config import load_config

    overrides = list(args.overrides)
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    if args.seed is not None:
        overrides.append(f"trainer.seed={args.seed}")
    config = load_config(args.config, overrides)

    from captioner.compare.cells import compare

    result = compare(config, args.cells, args.out, encoder_from=args.encoder_from)
    print(f"{'cell':6}{'params':>12}{'recurrent':>12}{'s/epoch':>9}{'BLEU-4':>8}{'CIDEr-D':>9}"
          f"{'clipped':>9}{'grad t1/tT start':>18}{'end':>9}")
    for cell, run in result["cells"].items():
        ratios = [norms[0] / norms[-1] if norms[-1] else float("nan")
                  for norms in run["grad_norm_per_step"].values()]
        clipped = "off" if run["clip_fraction"] is None else f"{100 * run['clip_fraction']:.1f}%"
        print(f"{cell:6}{run['params']:>12,}{run['recurrent_params']:>12,}{run['epoch_seconds']:>9.1f}"
              f"{run['test']['bleu4']:>8.3f}{run['test']['cider']:>9.3f}{clipped:>9}"
              f"{ratios[0]:>18.2g}{ratios[1]:>9.2g}")
    print(f"report: {(args.out / 'index.html').resolve()}")
    return 0
