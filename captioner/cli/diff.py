"""`captioner diff A B`: two evaluations of the same images compared, with paired intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import at_least, command, random_seed

# Each paired resample recomputes every corpus metric: a million takes minutes already.
MAX_RESAMPLES = 1_000_000


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "diff", "compare two evaluations of the same images: paired bootstrap intervals "
                             "of each metric's difference, the images that changed most, failure tags", [
        "captioner diff runs/a/eval-test runs/b/eval-test --out diff-a-b",
        "captioner diff runs/a/eval-test runs/b/checkpoints/best.ckpt --out diff-a-b",
        "captioner diff runs/a/eval-test runs/b/eval-test   # the table only",
    ], extra="exit status: 0 done; 1 refused (different images or references, a bad folder); "
             "2 wrong command line")
    p.add_argument("a", type=Path, metavar="A", help="evaluation folder or checkpoint")
    p.add_argument("b", type=Path, metavar="B", help="evaluation folder or checkpoint")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for diff.json and index.html (and a checkpoint's evaluation, in "
                        "DIR/a or DIR/b); default: print the table only")
    p.add_argument("--split", default=None, help="split to evaluate a checkpoint on (default: the "
                                                 "other side's split, else A's eval.split)")
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="evaluate a checkpoint on the first N images only (as evaluate --limit)")
    p.add_argument("--device", default="auto", help="for evaluating checkpoints")
    p.add_argument("--show", type=at_least(0), default=12,
                   help="images per direction in the page's most-changed lists")
    p.add_argument("--resamples", type=at_least(1000, MAX_RESAMPLES), default=1000,
                   help=f"paired bootstrap resamples, 1000 to {MAX_RESAMPLES:,}")
    p.add_argument("--seed", type=random_seed, default=0, help="seed of the resamples")


def run(args: argparse.Namespace) -> int:
    from captioner.evaluation.diff import diff_paths
    from captioner.util.console import counted

    result = diff_paths(args.a, args.b, out_dir=args.out, split=args.split, limit=args.limit,
                        device=args.device, resamples=args.resamples, seed=args.seed, show=args.show)
    print(f"{'metric':14}{'A':>9}{'B':>9}{'B-A':>9}   {'95% interval of B-A':<22}{'B better in':>11}")
    for name, m in result.metrics.items():
        a, b, delta = ("n/a" if value is None else format(value, spec)
                       for value, spec in ((m.a, ".3f"), (m.b, ".3f"), (m.delta, "+.3f")))
        interval = ("n/a" if m.delta is None else "not resampled" if m.interval is None
                    else f"[{m.interval[0]:+.3f}, {m.interval[1]:+.3f}]")
        wins = "" if m.b_wins is None else f"{100 * m.b_wins:.1f}%"
        print(f"{name:14}{a:>9}{b:>9}{delta:>9}   {interval:<22}{wins:>11}")
    print(f"{counted(result.images, 'image')}, {args.resamples} paired resamples; CHAIR: lower "
          "is better, object recall: higher")
    if args.out is not None:
        print(f"report: {(args.out / 'index.html').resolve()}")
    return 0
