"""What the commands share: argument groups, help formatting, value checks, result lines."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError


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
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help=f"override any setting, e.g. {example}")


def checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, metavar="CKPT",
                        help="a checkpoint (default: the best of the latest run in --runs)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                        help="where `captioner train` put its runs (its output_dir)")


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `low` (a wrong one is a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


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


SCORES = (("bleu1", "BLEU-1"), ("bleu2", "BLEU-2"), ("bleu3", "BLEU-3"), ("bleu4", "BLEU-4"),
          ("cider", "CIDEr-D"), ("rouge_l", "ROUGE-L"), ("meteor", "METEOR"))


def metrics_line(metrics: dict[str, Any], split: str) -> str:
    """"test metrics: BLEU-1 0.942 ..." with each metric's scale said once."""
    scores = metrics["metrics"]
    shown = "  ".join(f"{name} {scores[key]:.3f}" for key, name in SCORES if key in scores)
    return f"{split} metrics:  {shown}   (CIDEr-D on 0-10, the others 0-1)"
