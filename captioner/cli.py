"""The command line: parse arguments, call the stage functions, print results. Nothing else.

Heavy modules are imported inside each command so that `captioner caption` starts quickly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.config import ShapesConfig
from captioner.errors import CaptionerError, Interrupted

if TYPE_CHECKING:
    from captioner.model.inference import CaptionResult


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a captioner (default: the built-in shapes dataset)")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in shapes settings)")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="continue a run from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config value, e.g. decoder.cell=gru trainer.max_epochs=10")


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="compute and cache the fc7 features of a config's splits "
                                       "(frozen encoder; train does it too when they are missing)")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in shapes settings)")
    p.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                   help="extract only this split (repeatable; default: train, val and eval.split)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config value, e.g. data.num_workers=16 eval.batch_size=256")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="train the encoder as a classifier of the dataset's objects and "
                                        "save it without its classifier (for encoder.weights=PATH)")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in shapes settings)")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="continue an interrupted pretraining")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config value, e.g. pretrain.epochs=8 encoder.weights=imagenet")


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption images or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", type=Path, help="default: the latest run's best checkpoint")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--n-best", type=int, default=1,
                   help="print the N best beams (or N samples) with their log-probabilities")
    p.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha; 0 = none")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--sample", action="store_true", help="sample instead of beam search")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample; <1 sharpens")
    p.add_argument("--top-k", type=int, default=0, help="with --sample; 0 = whole vocabulary")
    p.add_argument("--seed", type=int, default=None, help="with --sample: reproducible draws")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: faster CNN on bf16 hardware, but batch-dependent (default: fp32)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split and write the HTML report")
    p.add_argument("--checkpoint", type=Path, help="default: the latest run's best checkpoint")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--split", default=None, help="default: the checkpoint's eval.split (test)")
    p.add_argument("--out", type=Path, metavar="DIR", help="report folder (default: <run>/eval-<split>)")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--worst", type=int, default=None, help="failure-gallery size (default 24)")
    p.add_argument("--device", default="auto")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write datasets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    s = dsub.add_parser("shapes", help="write the built-in shapes dataset (COCO formats)")
    s.add_argument("--out", type=Path, required=True)
    defaults = ShapesConfig()
    s.add_argument("--num-train", type=int, default=defaults.num_train)
    s.add_argument("--num-val", type=int, default=defaults.num_val)
    s.add_argument("--num-test", type=int, default=defaults.num_test)
    s.add_argument("--size", type=int, default=defaults.size)
    s.add_argument("--seed", type=int, default=defaults.seed)
    _add_data_import(dsub)


def _add_data_import(dsub: argparse._SubParsersAction) -> None:
    from captioner.data.importing.detect import FORMATS
    from captioner.data.importing.splits import parse_fractions

    def fractions(text: str) -> tuple[float, float, float]:
        try:
            return parse_fractions(text)
        except CaptionerError as err:  # a bad command line: argparse's message and exit status 2
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"--split {text}: ")) from None

    p = dsub.add_parser(
        "import", help="import your own captioned images (or Flickr8k/30k, COCO, Karpathy files)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a dataset folder that `captioner train data.root=DIR` trains on, from a "
                    "captions file or a dataset folder, and report what was wrong with it.",
        epilog="examples:\n"
               "  captioner data import photos/captions.csv --out data/mine\n"
               "  captioner data import Flickr8k_text/ --images Flicker8k_Dataset --out data/flickr8k\n"
               "  captioner data import data/coco/dataset_flickr30k.json --images flickr30k_images "
               "--out data/flickr30k\n\n"
               "exit status: 0 imported; 3 imported, but rows or images were left out (listed in "
               "DIR/import_report.json); 1 nothing imported (one-line error); 2 bad command line")
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="captions file (CSV, TSV, JSONL, Flickr token/CSV, COCO or Karpathy JSON) or "
                        "a folder holding a known dataset's files")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset folder to write: new, empty, or an earlier import's")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="folder the image names are relative to (default: found beside the captions file)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="auto",
                   help="source format (default: auto, from the file names and contents)")
    p.add_argument("--split", type=fractions, default="0.9,0.05,0.05", metavar="TRAIN,VAL,TEST",
                   help="split fractions where the source has no splits (default: 0.9,0.05,0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random split (default: 0)")
    p.add_argument("--copy", action="store_true", help="copy the images into DIR/images "
                                                       "(default: referenced where they are)")
    p.add_argument("--encoding", help="text encoding of the captions file (default: UTF-8, or "
                                      "what its byte-order mark says)")
    p.add_argument("--verify-images", action="store_true",
                   help="decode every image (default: only check that it exists and is not empty)")
    p.add_argument("--min-count", type=int, default=5,
                   help="vocabulary threshold for the report's coverage figure (default: 5)")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train the same decoder with each recurrent cell and compare "
                                       "them (parameters, speed, scores, gradient flow, gates)")
    p.add_argument("--cells", nargs="+", choices=("rnn", "lstm", "gru"), default=["rnn", "lstm", "gru"])
    p.add_argument("--config", type=Path, help="YAML config (default: built-in shapes settings)")
    p.add_argument("--max-epochs", type=int, help="epochs per cell (default: trainer.max_epochs)")
    p.add_argument("--seed", type=int, help="seed of every cell (default: trainer.seed)")
    p.add_argument("--encoder-from", type=Path, metavar="CKPT",
                   help="take the frozen encoder from this checkpoint (default: the latest run's, "
                        "when there is one; otherwise the config's encoder)")
    p.add_argument("--out", type=Path, required=True, help="folder for compare.json and index.html")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config value")


def _add_diff(sub: argparse._SubParsersAction) -> None:
    purpose = ("compare two evaluations of the same images: paired bootstrap intervals of each "
               "metric's difference, the images that changed most, failure tags")
    p = sub.add_parser(
        "diff", help=purpose, description=purpose[0].upper() + purpose[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  captioner diff runs/a/eval-test runs/b/eval-test --out diff-a-b\n"
               "  captioner diff runs/a/eval-test runs/b/checkpoints/best.ckpt --out diff-a-b\n"
               "  captioner diff runs/a/eval-test runs/b/eval-test   # the table only\n"
               "exit status: 0 done, 1 refused (different images or references, bad folder)")
    p.add_argument("a", type=Path, metavar="A", help="evaluation folder or checkpoint")
    p.add_argument("b", type=Path, metavar="B", help="evaluation folder or checkpoint")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for diff.json and index.html (and a checkpoint's evaluation, in "
                        "DIR/a or DIR/b); default: print the table only")
    p.add_argument("--split", default=None, help="split to evaluate a checkpoint on (default: the "
                                                 "other side's split, else A's eval.split)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a checkpoint on the first N images only (as evaluate --limit)")
    p.add_argument("--device", default="auto", help="for evaluating checkpoints (default: auto)")
    p.add_argument("--show", type=int, default=12,
                   help="images per direction in the page's most-changed lists (default: 12)")
    p.add_argument("--resamples", type=int, default=1000,
                   help="paired bootstrap resamples, at least 1000 (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resamples (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    from captioner import __version__

    parser = argparse.ArgumentParser(
        prog="captioner",
        description="Show-and-tell image captioning: VGG fc7 features into an LSTM/GRU decoder.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_pretrain, _add_extract, _add_caption, _add_evaluate, _add_data,
                _add_compare, _add_diff):
        add(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from captioner.config import load_config
    from captioner.training.train import train

    if args.resume is not None:
        result = train(None, resume=args.resume, overrides=args.overrides,
                       evaluate_after=not args.no_eval)
    else:
        config = load_config(args.config, args.overrides)
        result = train(config, evaluate_after=not args.no_eval)
    if not result.run_dir or not result.best.name:
        return 0
    print(f"run folder:      {result.run_dir}")
    print(f"best checkpoint: {result.best}")
    if result.metrics:
        _print_metrics(result.metrics)
        print(f"report:          {result.report / 'index.html'}")
    return 0


def _print_metrics(metrics: dict) -> None:
    scores = metrics["metrics"]
    names = [k for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "meteor") if k in scores]
    print("test metrics (scale 0-1):  " + "  ".join(f"{k.upper()} {scores[k]:.3f}" for k in names))


def _checkpoint(args: argparse.Namespace) -> Path:
    from captioner.util.runs import latest_checkpoint

    if args.checkpoint is not None:
        return args.checkpoint
    checkpoint = latest_checkpoint(args.runs)
    print(f"using {checkpoint}", file=sys.stderr)
    return checkpoint


def cmd_pretrain(args: argparse.Namespace) -> int:
    from captioner.training.pretrain import pretrain

    result = pretrain(args.config, args.overrides, resume=args.resume)
    print(f"encoder weights: {result.weights}")
    print(f"validation F1 {result.f1:.3f}, images with every object right {result.exact:.3f}")
    print(f"train on them with: captioner train encoder.weights={result.weights}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from captioner.model.inference import Captioner, Decoding, expand_folder, resolve_device

    # Options and device are checked before a checkpoint of possibly gigabytes is read.
    decoding = Decoding(
        beam_size=args.beam_size, n_best=args.n_best, max_length=args.max_length,
        length_penalty=args.length_penalty, sample=args.sample, temperature=args.temperature,
        top_k=args.top_k,
    )
    device = resolve_device(args.device)
    captioner = Captioner.from_checkpoint(_checkpoint(args), device=device, precision=args.precision)
    given = [(arg, [str(p) for p in expand_folder(arg).images]) for arg in args.inputs]
    paths = [path for _, expanded in given for path in expanded]
    results = captioner.stream(paths, **vars(decoding), seed=args.seed, batch_size=args.batch_size)
    failed = False
    for arg, expanded in given:  # results in the order the inputs were given
        if not expanded:
            failed = True
            _report_error(args.format, arg, f"{arg}: no images in this folder")
        for result in itertools.islice(results, len(expanded)):
            failed |= result.error is not None
            _print_caption(args, result, tagged=len(paths) > 1)
    return 1 if failed else 0


def _print_caption(args: argparse.Namespace, result: CaptionResult, *, tagged: bool) -> None:
    """One result: jsonl, n-best lines with log-probabilities, or the caption (after the
    image's name when there are several)."""
    if result.error is not None:
        _report_error(args.format, result.image, result.error)
    elif args.format == "jsonl":
        record = {"image": result.image, "caption": result.text, "score": result.score}
        if args.n_best > 1:
            record["n_best"] = [{"caption": c.text, "logprob": c.logprob, "score": c.score}
                                for c in result.captions]
        print(json.dumps(record), flush=True)
    elif args.n_best > 1:
        lines = [f"  {c.logprob:8.3f}  {c.text}" for c in result.captions]
        print("\n".join([result.image, *lines]), flush=True)
    else:
        print(f"{result.image}\t{result.text}" if tagged else result.text, flush=True)


def _report_error(fmt: str, image: str, message: str) -> None:
    if fmt == "jsonl":
        print(json.dumps({"image": image, "error": message}), flush=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioner.evaluation.evaluate import evaluate

    metrics, out_dir = evaluate(_checkpoint(args), split=args.split, out_dir=args.out,
                                beam_size=args.beam_size, limit=args.limit, worst=args.worst,
                                device=args.device)
    _print_metrics(metrics)
    print(f"report: {out_dir / 'index.html'}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from captioner.config import load_config
    from captioner.data.prepare import prepare
    from captioner.features.extract import extract
    from captioner.training.train import configured_encoder

    config = load_config(args.config, args.overrides)
    data = prepare(config)
    for result in extract(config, data, configured_encoder(config, data), args.splits):
        skipped = result.images - len(result.store.ids)
        note = f" ({skipped} unreadable, skipped)" if skipped else ""
        print(f"{result.split}: {len(result.store.ids)} images{note} -> {result.store.folder}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.dataset == "import":
        return cmd_data_import(args)
    from captioner.data.shapes import ShapesSpec, generate_shapes

    spec = ShapesSpec(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                      size=args.size, seed=args.seed)
    print(generate_shapes(args.out, spec))
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from captioner.data.importing import import_dataset

    report = import_dataset(args.source, args.out, images=args.images, fmt=args.fmt,
                            split=args.split, seed=args.seed, copy=args.copy,
                            encoding=args.encoding, verify_images=args.verify_images,
                            min_count=args.min_count)
    for problem in report.problems[:5]:
        where = problem.get("line", problem.get("entry"))
        print(f"warning: {problem['file']}:{where}: {problem['message']}", file=sys.stderr)
    if report.problems_total > 5:
        print(f"warning: ... {report.problems_total - 5} more in {args.out / 'import_report.json'}",
              file=sys.stderr)
    print(report.summary())
    return 3 if report.problems_total else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from captioner.compare.cells import compare
    from captioner.config import load_config

    overrides = list(args.overrides)
    if args.max_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.max_epochs}")
    if args.seed is not None:
        overrides.append(f"trainer.seed={args.seed}")
    result = compare(load_config(args.config, overrides), args.cells, args.out,
                     encoder_from=args.encoder_from)
    print(f"{'cell':6}{'params':>12}{'recurrent':>12}{'s/epoch':>9}{'BLEU-4':>8}{'CIDEr-D':>9}"
          f"{'clipped':>9}{'grad t1/tT start':>18}{'end':>9}")
    for cell, run in result["cells"].items():
        ratios = [norms[0] / norms[-1] if norms[-1] else float("nan")
                  for norms in run["grad_norm_per_step"].values()]
        clipped = "off" if run["clip_fraction"] is None else f"{100 * run['clip_fraction']:.1f}%"
        print(f"{cell:6}{run['params']:>12,}{run['recurrent_params']:>12,}{run['epoch_seconds']:>9.1f}"
              f"{run['test']['bleu4']:>8.3f}{run['test']['cider']:>9.3f}{clipped:>9}"
              f"{ratios[0]:>18.2g}{ratios[1]:>9.2g}")
    print(f"report: {args.out / 'index.html'}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from captioner.evaluation.diff import diff_paths

    result = diff_paths(args.a, args.b, out_dir=args.out, split=args.split, limit=args.limit,
                        device=args.device, resamples=args.resamples, seed=args.seed, show=args.show)
    print(f"{'metric':9}{'A':>9}{'B':>9}{'B-A':>9}   {'95% interval of B-A':<22}{'B better in':>11}")
    for name, m in result["metrics"].items():
        a, b, delta = ("n/a" if m[k] is None else format(m[k], spec)
                       for k, spec in (("a", ".3f"), ("b", ".3f"), ("delta", "+.3f")))
        interval = ("n/a" if m["delta"] is None else "not resampled" if m["interval"] is None
                    else f"[{m['interval'][0]:+.3f}, {m['interval'][1]:+.3f}]")
        wins = "" if m["b_wins"] is None else f"{100 * m['b_wins']:.1f}%"
        print(f"{name:9}{a:>9}{b:>9}{delta:>9}   {interval:<22}{wins:>11}")
    print(f"{result['images']} images, {args.resamples} paired resamples; CHAIR: lower is better")
    if args.out is not None:
        print(f"report: {(args.out / 'index.html').resolve()}")
    return 0


COMMANDS = {"train": cmd_train, "pretrain": cmd_pretrain, "extract": cmd_extract, "caption": cmd_caption,
            "evaluate": cmd_evaluate, "data": cmd_data, "compare": cmd_compare, "diff": cmd_diff}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `key=value` overrides may come before or after the options."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    overrides = [x for x in extras if "=" in x and not x.startswith("-")]
    if extras and (len(overrides) < len(extras) or not hasattr(args, "overrides")):
        unknown = [x for x in extras if x not in overrides] or extras
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return COMMANDS[args.command](args)
    except Interrupted as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
