"""`captioner evaluate`: score a checkpoint on a split and write the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import (
    at_least,
    check_header,
    checkpoint,
    checkpoint_arguments,
    command,
    decoding_arguments,
    metrics_line,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "evaluate", "caption a split with a checkpoint, score it (BLEU, CIDEr-D, "
                                 "ROUGE-L, METEOR, CHAIR, 95% intervals) and write the report", [
        "captioner evaluate",
        "captioner evaluate --split val --beam-size 5 --out report-beam5/",
        "captioner evaluate --checkpoint runs/coco_vgg16_lstm/checkpoints/best.ckpt --limit 500",
    ])
    checkpoint_arguments(p)
    p.add_argument("--split", default=None, help="split to score (default: the checkpoint's eval.split)")
    p.add_argument("--out", type=Path, metavar="DIR", help="report folder (default: <run>/eval-<split>)")
    decoding_arguments(p, "beam_size", elsewhere={"beam_size": "the checkpoint's eval.beam_size"})
    p.add_argument("--limit", type=at_least(1), default=None, help="score only the first N images")
    p.add_argument("--worst", type=at_least(0), default=None,
                   help="images in the failure gallery (default: the checkpoint's eval.worst)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def run(args: argparse.Namespace) -> int:
    ckpt = checkpoint(args)
    check_header(ckpt)

    from captioner.evaluation.evaluate import evaluate

    metrics, out_dir = evaluate(ckpt, split=args.split, out_dir=args.out, beam_size=args.beam_size,
                                limit=args.limit, worst=args.worst, device=args.device)
    print(metrics_line(metrics))
    print(f"report: {(out_dir / 'index.html').resolve()}")
    return 0
