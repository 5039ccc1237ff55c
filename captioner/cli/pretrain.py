"""`captioner pretrain`: a VGG trained as a classifier of the dataset's objects, saved without
its classifier for encoder.weights=PATH."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import command, config_arguments
from captioner.errors import CaptionerError


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "pretrain", "train the encoder as a multi-label classifier of the dataset's "
                                 "objects (COCO instances), then save it without its classifier", [
        "captioner pretrain",
        "captioner pretrain pretrain.epochs=8",
        "captioner pretrain --config configs/coco_vgg16_lstm.yaml encoder.weights=imagenet",
        "captioner pretrain --resume runs/shapes-pretrain/checkpoints/last.ckpt",
    ])
    config_arguments(p, "pretrain.epochs=8 encoder.weights=imagenet")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="continue an interrupted pretraining")


def run(args: argparse.Namespace) -> int:
    if args.resume is not None and not args.resume.is_file():
        raise CaptionerError(f"checkpoint not found: {args.resume}")
    if args.resume is None:
        from captioner.cli.settings import load

        load(args.config, args.overrides)  # a bad setting fails before torch loads

    from captioner.training.pretrain import pretrain

    result = pretrain(args.config, args.overrides, resume=args.resume)
    weights = result.weights.resolve()
    print(f"encoder weights: {weights}")
    print(f"validation F1 {result.f1:.3f}, images with every object right {result.exact:.3f}")
    print(f"train on them with: captioner train encoder.weights={weights}")
    return 0
