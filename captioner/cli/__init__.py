"""The command line: `captioner COMMAND ...`, one module per command, each with `register`
(its arguments, help and examples) and `run` (call the stage functions, print the results).

Conventions (shared/CLI_CONVENTIONS.md): results on stdout, everything for the person on stderr;
arguments, settings and paths are checked before torch is imported; exit status 0 when all was
done, 1 after a one-line error, 2 for a wrong command line, 3 when some inputs failed and the
rest were done, 130 after Ctrl-C (with how to continue). A closed pipe (`| head`) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from captioner.errors import CaptionerError, Interrupted

COMMANDS = ("train", "finetune", "pretrain", "extract", "caption", "evaluate", "compare", "diff", "data",
            "serve", "config", "completion")
EXIT_CODES = ("exit status: 0 done; 1 error (one line on stderr); 2 wrong command line; "
              "3 done, but some inputs failed; 130 interrupted")


def build_parser() -> argparse.ArgumentParser:
    from captioner.version import __version__

    parser = argparse.ArgumentParser(
        prog="captioner", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show-and-tell image captioning: a VGG's fc7 feature sets the initial state of "
                    "an LSTM, GRU or RNN decoder, trained with Lightning on COCO-style data.",
        epilog="examples:\n  captioner train                      # the built-in dataset, end to end\n"
               "  captioner caption photo.jpg          # with the latest run's best checkpoint\n"
               "  captioner evaluate --split test\n"
               "  captioner COMMAND --help\n\n" + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"captioner.cli.{name}").register(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; `key=value` overrides may come before or after the options."""
    parser = build_parser()
    _complete(parser)
    args, extras = parser.parse_known_args(argv)
    overrides = [x for x in extras if "=" in x and not x.startswith("-")]
    if extras and (len(overrides) < len(extras) or not hasattr(args, "overrides")):
        unknown = [x for x in extras if x not in overrides] or extras
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def _complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete's protocol), if this is one."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from captioner.util import console

    console.configure(quiet=args.quiet, verbose=args.verbose)
    try:
        if getattr(args, "overrides", None):
            from captioner.cli.settings import check_overrides

            check_overrides(args.overrides)
        return importlib.import_module(f"captioner.cli.{args.command}").run(args)
    except Interrupted as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do, without Python's
        # complaint when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
