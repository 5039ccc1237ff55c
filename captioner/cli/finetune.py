"""`captioner finetune`: self-critical training (CIDEr-D by REINFORCE) of a trained checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import command, config_arguments, print_run
from captioner.errors import CaptionerError


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "finetune", "fine-tune a trained checkpoint by self-critical sequence training "
                                 "(its own sampled captions rewarded by CIDEr-D against a greedy "
                                 "baseline), into a new run folder <name>-scst, and evaluate it", [
        "captioner finetune runs/shapes/checkpoints/best.ckpt scst.epochs=5",
        "captioner finetune runs/shapes/checkpoints/best.ckpt scst.epochs=5 scst.baseline=mean",
        "captioner train --resume runs/shapes-scst/checkpoints/last.ckpt scst.epochs=8   # continue",
    ])
    p.add_argument("checkpoint", type=Path, metavar="CKPT", help="the checkpoint to start from")
    config_arguments(p, "scst.epochs=5 scst.lr=5e-5")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the test split")


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        raise CaptionerError("finetune continues with the checkpoint's own config: drop --config "
                             "(key=value overrides still apply)")
    if not args.checkpoint.is_file():
        raise CaptionerError(f"checkpoint not found: {args.checkpoint}")

    from captioner.training.train import finetune  # torch: after every check

    result = finetune(args.checkpoint, args.overrides, evaluate_after=not args.no_eval)
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return 0
    print_run(result)
    return 0
