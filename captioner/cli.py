"""The command line: parse arguments, call the stage functions, print results. Nothing else.

Heavy modules are imported inside each command so that `captioner caption` starts quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captioner.errors import CaptionerError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a captioner (default: the built-in shapes dataset)")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in shapes settings)")
    p.add_argument("--resume", type=Path, metavar="CKPT", help="continue a run from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any config value, e.g. decoder.cell=gru trainer.max_epochs=10")


def _add_caption(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption images or folders of images")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--checkpoint", type=Path, help="default: the latest run's best checkpoint")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where runs live (default: runs)")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--n-best", type=int, default=1, help="print the N best beams with log-probs")
    p.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha; 0 = none")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--sample", action="store_true", help="sample instead of beam search")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split and write the HTML report")
    p.add_argument("--checkpoint", type=Path, help="default: the latest run's best checkpoint")
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--split", default=None, help="default: the checkpoint's eval.split (test)")
    p.add_argument("--out", type=Path, help="report folder (default: <run>/eval-<split>)")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--worst", type=int, default=None, help="failure-gallery size (default 24)")
    p.add_argument("--device", default="auto")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write datasets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    s = dsub.add_parser("shapes", help="write the built-in shapes dataset (COCO formats)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--num-train", type=int, default=3000)
    s.add_argument("--num-val", type=int, default=250)
    s.add_argument("--num-test", type=int, default=250)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from captioner import __version__

    parser = argparse.ArgumentParser(prog="captioner", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_caption, _add_evaluate, _add_data):
        add(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from captioner.config import load_config
    from captioner.training import train

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
    from captioner.runs import latest_checkpoint

    if args.checkpoint is not None:
        return args.checkpoint
    checkpoint = latest_checkpoint(args.runs)
    print(f"using {checkpoint}", file=sys.stderr)
    return checkpoint


def cmd_caption(args: argparse.Namespace) -> int:
    from captioner.inference import Captioner, expand_inputs

    checkpoint = _checkpoint(args)
    captioner = Captioner.from_checkpoint(checkpoint, device=args.device)
    inputs, failed = [], False
    for given in args.inputs:
        expanded = expand_inputs([given])
        if not expanded:
            failed = True
            _report_error(args.format, given, f"{given}: no images in this folder")
        inputs.extend(expanded)
    results = captioner.caption(
        inputs, batch_size=args.batch_size, beam_size=args.beam_size, n_best=args.n_best,
        max_length=args.max_length, length_penalty=args.length_penalty,
        sample_captions=args.sample, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
    )
    for result in results:
        if result.error is not None:
            failed = True
            _report_error(args.format, result.image, result.error)
        elif args.format == "jsonl":
            record = {"image": result.image, "caption": result.text}
            if args.n_best > 1:
                record["n_best"] = [{"caption": c.text, "logprob": c.logprob, "score": c.score}
                                    for c in result.captions]
            print(json.dumps(record), flush=True)
        elif args.n_best > 1:
            print(result.image)
            for c in result.captions:
                print(f"  {c.logprob:8.3f}  {c.text}")
        else:
            print(f"{result.image}\t{result.text}" if len(inputs) > 1 else result.text)
    return 1 if failed else 0


def _report_error(fmt: str, image: str, message: str) -> None:
    if fmt == "jsonl":
        print(json.dumps({"image": image, "error": message}), flush=True)
    else:
        print(f"error: {message}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from captioner.evaluation import evaluate

    metrics, out_dir = evaluate(_checkpoint(args), split=args.split, out_dir=args.out,
                                beam_size=args.beam_size, limit=args.limit, worst=args.worst,
                                device=args.device)
    _print_metrics(metrics)
    print(f"report: {out_dir / 'index.html'}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from captioner.data.shapes import ShapesSpec, generate_shapes

    spec = ShapesSpec(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                      size=args.size, seed=args.seed)
    print(generate_shapes(args.out, spec))
    return 0


COMMANDS = {"train": cmd_train, "caption": cmd_caption, "evaluate": cmd_evaluate, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
