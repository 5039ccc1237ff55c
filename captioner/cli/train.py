"""`captioner train`: train (or continue training) a captioner and evaluate its best checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import command, config_arguments, metrics_line, print_run
from captioner.errors import CaptionerError


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "train", "train a captioner (default: the built-in shapes dataset, end to end) "
                              "and evaluate its best checkpoint on the test split", [
        "captioner train",
        "captioner train decoder.cell=gru trainer.max_epochs=20",
        "captioner train --config configs/coco_vgg16_lstm.yaml",
        "captioner train --resume runs/shapes/checkpoints/last.ckpt trainer.max_epochs=30",
        "captioner train scst.epochs=5   # then self-critical training, into runs/shapes-scst",
    ])
    config_arguments(p, "decoder.cell=gru trainer.max_epochs=10")
    p.add_argument("--resume", type=Path, metavar="CKPT",
                   help="continue the run this checkpoint belongs to (its own config, plus overrides)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the test split")


def run(args: argparse.Namespace) -> int:
    from captioner.cli.settings import load

    if args.resume is not None and args.config is not None:
        raise CaptionerError("--resume continues with the checkpoint's own config: drop --config "
                             "(key=value overrides still apply)")
    if args.resume is not None and not args.resume.is_file():
        raise CaptionerError(f"checkpoint not found: {args.resume}")
    config = None if args.resume is not None else load(args.config, args.overrides)

    from captioner.training.train import resume, train  # torch and Lightning: after every check

    evaluate_after = not args.no_eval
    result = (resume(args.resume, args.overrides, evaluate_after=evaluate_after) if config is None
              else train(config, evaluate_after=evaluate_after))
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return 0
    if result.before is not None:  # scst.epochs > 0: the cross-entropy run came first
        print(f"cross-entropy run folder: {result.before.run_dir.resolve()}")
        if result.before.metrics is not None:
            print("cross-entropy " + metrics_line(result.before.metrics))
    print_run(result)
    return 0
