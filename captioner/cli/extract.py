"""`captioner extract`: the fc7 features of a config's splits, computed once into the cache."""

from __future__ import annotations

import argparse

from captioner.cli.common import command, config_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "extract", "compute and cache the fc7 features of a config's splits (train "
                                "and evaluate do it themselves when they are missing)", [
        "captioner extract --config configs/coco_vgg16_lstm.yaml data.num_workers=16",
        "captioner extract --config configs/coco_vgg16_lstm.yaml --split test",
        "torchrun --nproc_per_node 4 -m captioner extract --config configs/coco_vgg16_lstm.yaml",
    ])
    config_arguments(p, "data.num_workers=16 eval.batch_size=256")
    p.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                   help="extract only this split (repeatable; default: train, val and eval.split)")


def run(args: argparse.Namespace) -> int:
    from captioner.cli.settings import load

    config = load(args.config, args.overrides)

    from captioner.data.prepare import prepare
    from captioner.features.extract import extract
    from captioner.model.encoder import build_encoder
    from captioner.training.train import prepare_encoder_weights
    from captioner.util.console import counted

    data = prepare(config)
    weights = prepare_encoder_weights(config, data)  # encoder.weights=pretrain: pretrains first
    encoder = build_encoder(config.encoder.arch, weights, seed=config.trainer.seed)
    for result in extract(config, data, encoder, args.splits):
        skipped = result.images - len(result.store.ids)
        note = f" ({skipped} unreadable, skipped)" if skipped else ""
        print(f"{result.split}: {counted(len(result.store.ids), 'image')}{note} -> "
              f"{result.store.folder}")
    return 0
