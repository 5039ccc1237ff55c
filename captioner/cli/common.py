"""What the commands share: argument groups, help formatting, value checks, result lines."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.errors import CaptionerError

if TYPE_CHECKING:  # annotations only: the CLI checks its arguments before importing more
    from captioner.evaluation.records import EvaluationMetrics


class Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless the help already says it, or there is none
    to say); the description and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # By identity: 0 == False, and a default of 0 is worth showing.
        if "default" in text or any(default is x for x in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def command(sub: argparse._SubParsersAction, name: str, purpose: str, examples: list[str],
            extra: str = "") -> argparse.ArgumentParser:
    """A subcommand with one sentence of purpose, -q/-v, examples and the exit statuses."""
    from captioner.cli import EXIT_CODES

    parser = sub.add_parser(
        name, help=purpose.replace("%", "%%"), description=purpose[0].upper() + purpose[1:] + ".",
        formatter_class=Help,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + (extra or EXIT_CODES))
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors and results only")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the libraries' own messages and warnings")
    return parser


def config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="YAML config (default: the built-in settings; see `captioner config show`)")
    from captioner.cli.settings import complete

    # A group of its own: under "positional arguments" key=value read as required.
    group = parser.add_argument_group("settings")
    action = group.add_argument("overrides", nargs="*", metavar="key=value",
                                help=f"optional, any number: override a setting, e.g. {example} "
                                     "(captioner config show lists them)")
    action.completer = complete  # type: ignore[attr-defined]  # argcomplete reads it


def checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="a checkpoint (default: the best of the latest run in --runs)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                        help="where `captioner train` put its runs (its output_dir)")


def at_least(low: int, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (to `at_most`); a wrong one is a usage error,
    exit 2, before anything loads."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also what int() says of a number of more than 4,300 digits
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if at_most is not None and not low <= value <= at_most:
            raise argparse.ArgumentTypeError(f"must be from {low} to {at_most}, got {value}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


# What numpy's and torch's generators both take; beyond it they raise (negative) or overflow.
random_seed = at_least(0, 2**32 - 1)


def number(low: float = -math.inf, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number from `low` to `high` (NaN and infinity are refused: NaN
    compares false with everything, so no later check would catch it)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if not low <= value <= high:
            span = f"from {low:g} to {high:g}" if math.isfinite(high) else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value:g}")
        return value
    return parse


def positive_float(text: str) -> float:
    value = number()(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def decoding_arguments(parser: argparse.ArgumentParser, *names: str,
                       elsewhere: dict[str, str] | None = None) -> None:
    """--beam-size, --n-best, ...: an option for each of Decoding's fields (or those in `names`),
    its type, limits, help and default read from the field's declaration. `elsewhere`: options
    whose default comes from another place (the checkpoint), said in their help; unset, they
    parse to None, as do the sampling options (so that giving one can imply --sample)."""
    from captioner.model.decoding import OPTIONS

    elsewhere = elsewhere or {}
    for name in names or OPTIONS:
        item = OPTIONS[name]
        meta, flag = item.metadata, f"--{name.replace('_', '-')}"
        if item.type == "bool":
            parser.add_argument(flag, action="store_true", help=meta["help"])
            continue
        low, high = meta["low"], meta["high"]
        if meta["positive"]:
            kind = positive_float
        elif item.type.startswith("int"):
            kind = at_least(low, high)
        else:
            kind = number(low, math.inf if high is None else high)
        span = "above 0" if meta["positive"] else f"at least {low:g}" if high is None \
            else f"{low:g} to {high:g}"
        default, note = item.default, meta["none"] and f"default: {meta['none']}"
        if meta["sampling"]:
            default, note = None, f"implies --sample; default {item.default}"
        elif name in elsewhere:
            default, note = None, f"default: {elsewhere[name]}"
        help = f"{meta['help']}, {span}" + (f" ({note})" if note else "")
        parser.add_argument(flag, type=kind, default=default, help=help)


def decoding_given(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options the command line gave (those left unset are absent)."""
    from captioner.model.decoding import OPTIONS

    return {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}


def checkpoint(args: argparse.Namespace) -> Path:
    """--checkpoint, checked, or the latest run's best (saying which, on stderr)."""
    from captioner.util.console import say
    from captioner.util.runs import latest_checkpoint

    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            raise CaptionerError(f"checkpoint not found: {args.checkpoint}")
        return args.checkpoint
    found = latest_checkpoint(args.runs)
    say(f"using {found.resolve()}")
    return found


# torch.save writes a zip (a pickle, before torch 1.6). What else people pass by mistake, by its
# first bytes, so the message can say what the file is instead of what the unpickler choked on.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
_LOOKS_LIKE = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"{", "JSON text"), (b"", "not a zip or pickle file"))


def check_header(path: Path) -> None:
    """Refuse a file that cannot be a checkpoint by its first bytes, saying what it looks like."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_CHECKPOINT_MAGIC):
        what = next(name for magic, name in _LOOKS_LIKE if head.startswith(magic))
        raise CaptionerError(f"{path}: not a readable checkpoint ({what}); give the .ckpt file "
                             "that captioner train wrote (runs/NAME/checkpoints/best.ckpt)")


SCORES = (("bleu1", "BLEU-1"), ("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"),
          ("cider", "CIDEr-D"), ("rouge_l", "ROUGE-L"), ("meteor", "METEOR"))


def print_run(result: Any) -> None:
    """What a finished training run prints on stdout: its folder, best checkpoint and scores."""
    print(f"run folder:      {result.run_dir.resolve()}")
    print(f"best checkpoint: {result.best.resolve()}")
    if result.metrics is not None:
        print(metrics_line(result.metrics))
        print(f"report:          {(result.report / 'index.html').resolve()}")


def metrics_line(metrics: EvaluationMetrics) -> str:
    """"test metrics: BLEU-1 0.942 ..." with each metric's scale said once."""
    scores, split = metrics.metrics, metrics.run.get("split", "evaluation")
    shown = "  ".join(f"{name} {scores[key]:.3f}" for key, name in SCORES if key in scores)
    return f"{split} metrics:  {shown}   (CIDEr-D on 0-10, the others 0-1)"
