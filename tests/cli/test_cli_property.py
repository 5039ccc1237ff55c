"""The whole command line against random and extreme values (issue 24, "done when"): every numeric
option of every subcommand, given 0, -1, huge, NaN, infinities, non-numbers or a random number,
and every choice option, either parses or is a one-line usage error with exit status 2, never a
traceback; the settings do the same through `config show`; and the largest values the options
accept run to a result in seconds, writing nothing outside the command's own output.

Parsing runs in-process (hundreds of cases in about a second); only a few cases need a process."""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import run_cli

from captioner.cli import build_parser, main, parse
from captioner.cli.settings import settings

EXTREMES = ["0", "-1", "1", str(2**63), "9" * 40, "1e308", "1e400", "nan", "-nan", "inf", "-inf",
            "Infinity", "abc", "", "0x10", "1.5", "-0.0", "1_000"]
# What each command needs besides the option under test, so that only that option can be wrong.
REQUIRED = {("caption",): ["x.png"], ("diff",): ["a", "b"], ("config",): ["show"],
            ("completion",): ["bash"], ("data", "shapes"): ["--out", "d"],
            ("data", "import"): ["src.csv", "--out", "d"], ("data", "coco"): ["--root", "d"],
            ("compare",): ["--out", "d"]}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, its parser) for every leaf subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, (*path, name))


def _options():
    """(argv before the option, option string, action) for every option that takes a value, and
    (command words, None, action) for a positional with choices (config's action, a shell)."""
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings and action.choices:
                yield list(path), None, action
            elif action.option_strings and action.nargs != 0 and action.type is not Path and (
                    action.type or action.choices):  # a path may well be called "nan"
                yield [*path, *REQUIRED.get(path, [])], action.option_strings[-1], action


OPTIONS = list(_options())


def _values(action: argparse.Action) -> list[str]:
    rng = random.Random(action.dest)
    values = [*EXTREMES, str(rng.randint(-10**6, 10**6)), repr(rng.uniform(-1e3, 1e3)),
              str(rng.randint(0, 2**40))]
    return values + [str(c) for c in action.choices or ()]


@pytest.fixture(autouse=True)
def one_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built once: building the parser for each of ~800 command lines took most of a minute."""
    monkeypatch.setattr("captioner.cli.build_parser", _PARSER)


_PARSER = functools.cache(build_parser)


def _parse_or_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> bool:
    """True if argv parsed; else it was a usage error: exit 2 and one error line, no traceback."""
    try:
        parse(argv)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert lines and ": error: " in lines[-1] and "Traceback" not in err, (argv, err)
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), (argv, err)
        return False
    return True


def test_the_options_cover_every_command() -> None:
    commands = {tuple(argv[:2]) if argv[0] == "data" else (argv[0],) for argv, _, _ in OPTIONS}
    assert {("caption",), ("evaluate",), ("serve",), ("diff",), ("compare",), ("data", "shapes"),
            ("data", "import"), ("data", "coco"), ("completion",)} <= commands
    assert len(OPTIONS) > 30


@pytest.mark.parametrize(("argv", "option", "action"), OPTIONS,
                         ids=[f"{' '.join(a[:2])} {o or a[-1]}" for a, o, _ in OPTIONS])
def test_every_value_parses_or_is_a_usage_error(argv: list[str], option: str | None,
                                                action: argparse.Action,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for value in _values(action):
        given = [*argv, f"{option}={value}"] if option else [*argv, value]
        parsed = _parse_or_usage_error(given, capsys)
        if parsed and value.lower().lstrip("-") in ("nan", "inf", "infinity", "1e400"):
            pytest.fail(f"{' '.join(given)} was accepted")


@pytest.mark.slow  # seconds: beyond the fast loop's budget
def test_every_setting_loads_or_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    for key in settings():
        for value in [*rng.sample(EXTREMES, 2), "[a]"]:  # every type meets each extreme, in turn
            code = main(["config", "show", f"{key}={value}"])
            out, err = capsys.readouterr()
            assert code in (0, 2) and "Traceback" not in err, (key, value, err)
            assert (code == 0) == bool(out) and (code == 0 or len(err.strip().splitlines()) == 1)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
def test_non_finite_settings_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    floats = [key for key, kind in settings().items() if kind is float]
    for key, value in zip(floats, itertools.cycle(["nan", "inf", "-inf"])):
        assert main(["config", "show", f"{key}={value}"]) == 2, key
        assert key in capsys.readouterr().err


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_the_largest_accepted_shapes_values_give_a_result(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("the user's")
    before = _tree(tmp_path)
    result = run_cli("data", "shapes", "--out", "d", "--num-train", "1", "--num-val", "1",
                     "--num-test", "1", "--size", "32", "--max-objects", "5", "--seed",
                     str(2**32 - 1), cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    after = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("d" + os.sep)}
    assert after == before


@pytest.mark.slow
def test_the_largest_accepted_caption_values_give_a_result_in_seconds(best: Path,
                                                                      tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(tmp_path / "one.png")
    before = _tree(tmp_path)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "captioner", "caption", "one.png", "--checkpoint", str(best),
         "--beam-size", "20", "--n-best", "20", "--max-length", "100", "--length-penalty=-10",
         "--batch-size", str(2**40), "--format", "jsonl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 30  # the torch import and model load are most of it
    assert _tree(tmp_path) == before
