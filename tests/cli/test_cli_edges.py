"""Every edge a user can reach on the command line (issue 24): limits shared with the API and the
server, non-finite numbers, output that depends on the command line only, exit status 2 for a wrong
command line, one-line messages in plain words, and completion of settings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO
from helpers.cli import run_cli
from PIL import Image

from captioner.errors import CaptionerError
from captioner.model.decoding import MAX_BEAM
from captioner.serve.options import RequestError

CAPTIONER = [sys.executable, "-m", "captioner"]


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one.png, a fake.jpg that is no image, and an empty subfolder."""
    folder = tmp_path_factory.mktemp("edges")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "one.png")
    (folder / "fake.jpg").write_bytes(b"not an image")
    (folder / "empty").mkdir()
    return folder


def _usage_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


# -- item 1: the beam, the n-best list and the caption length have the server's limits -----------
@pytest.mark.parametrize(("option", "value", "needle"), [
    ("--beam-size", "1000000", "--beam-size: must be from 1 to 20"),
    ("--beam-size", "21", "--beam-size: must be from 1 to 20"),
    ("--n-best", "21", "--n-best: must be from 1 to 20"),
    ("--max-length", "101", "--max-length: must be from 1 to 100"),
])
def test_caption_limits_are_usage_errors_before_torch(tmp_path: Path, option: str, value: str,
                                                     needle: str) -> None:
    script = ("import sys\nfrom captioner.cli import main\n"
              f"try:\n    main(['caption', 'x.png', '{option}', '{value}'])\n"
              "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"] and needle in result.stderr


def test_the_api_and_the_server_hold_the_same_limits() -> None:
    from captioner.model import decoding
    from captioner.serve import options

    assert (options.MAX_BEAM, options.MAX_WORDS) == (decoding.MAX_BEAM, decoding.MAX_WORDS) == (20, 100)
    for bad in ({"beam_size": 21}, {"n_best": 21, "beam_size": 21}, {"max_length": 101},
                {"sample": True, "n_best": 21}):
        with pytest.raises(CaptionerError):
            decoding.Decoding(**bad)
    decoding.Decoding(beam_size=20, n_best=20, max_length=100)


def _accepts(parse, value) -> bool:
    try:
        parse(value)
    except (argparse.ArgumentTypeError, CaptionerError, RequestError):
        return False
    return True


def test_every_decoding_option_is_declared_once() -> None:
    """Issue 23 item 6: each of Decoding's options is declared once, with its default, meaning and
    limits; the caption command's options, evaluate's --beam-size, the server's fields and the
    Python API are built from it: each takes the bounds and refuses the value just outside."""
    from captioner.cli import build_parser
    from captioner.model.decoding import OPTIONS, Decoding
    from captioner.serve.options import parse_options

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    caption, evaluate = ({a.dest: a for a in commands.choices[name]._actions}
                         for name in ("caption", "evaluate"))
    assert set(OPTIONS) <= set(caption) and "beam_size" in evaluate
    served = {"beam_size", "n_best", "max_length", "length_penalty"}
    for name, item in OPTIONS.items():
        meta, action = item.metadata, caption[name]
        assert action.help.startswith(meta["help"]) and f"--{name.replace('_', '-')}" in action.option_strings
        if item.type == "bool":
            assert action.nargs == 0 and action.default is item.default is False
            continue
        assert action.default == (None if meta["sampling"] else item.default)
        if meta["positive"]:
            edges = [(0, False), (1e-6, True)]
        else:
            step = 1 if item.type.startswith("int") else 1e-3
            low, high = meta["low"], meta["high"]
            edges = [(low - step, False), (low, True)]
            edges += [(high, True), (high + step, False)] if high is not None else [(10**6, True)]
        beam = {"beam_size": MAX_BEAM} if name == "n_best" else {}  # n_best needs as wide a beam
        for value, ok in edges:
            assert _accepts(action.type, str(value)) == ok, (name, value)
            assert _accepts(lambda given: Decoding.of(**given), {**beam, name: value}) == ok, (name, value)
            if name == "beam_size":
                assert _accepts(evaluate[name].type, str(value)) == ok, value
            if name in served:
                pairs = [*((k, str(v)) for k, v in beam.items()), (name, str(value))]
                assert _accepts(parse_options, pairs) == ok, (name, value)
    assert Decoding() == Decoding.of(**{name: item.default for name, item in OPTIONS.items()})
    with pytest.raises(CaptionerError, match="unknown decoding option 'beam'; the options are beam_size"):
        Decoding.of(beam=3)


def test_evaluate_beam_has_the_same_limit(tmp_path: Path) -> None:
    _usage_error(run_cli("evaluate", "--beam-size", "21", cwd=tmp_path), "must be from 1 to 20")


# -- item 2: non-finite numbers are usage errors everywhere -------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["caption", "x.png", "--length-penalty", "nan"], "--length-penalty: not a finite number"),
    (["caption", "x.png", "--length-penalty", "inf"], "--length-penalty: not a finite number"),
    (["caption", "x.png", "--length-penalty=-inf"], "--length-penalty: not a finite number"),
    (["caption", "x.png", "--temperature", "inf"], "--temperature: not a finite number"),
    (["caption", "x.png", "--temperature", "nan"], "--temperature: not a finite number"),
    (["serve", "--max-upload-mb", "inf"], "--max-upload-mb: not a finite number"),
])
def test_non_finite_numbers_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    _usage_error(run_cli(*args, cwd=tmp_path), needle)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_the_api_refuses_a_non_finite_length_penalty(value: float) -> None:
    from captioner.model.decoding import Decoding

    with pytest.raises(CaptionerError, match="length_penalty"):
        Decoding(length_penalty=value)


# -- item 3: whether a line names its image depends on the command line only --------------------
@pytest.mark.slow
def test_caption_lines_name_their_image_whatever_exists(best: Path, one: Path) -> None:
    def lines(*inputs: str) -> list[str]:
        result = run_cli("caption", *inputs, "--checkpoint", str(best), cwd=one)
        return result.stdout.splitlines()

    with_missing, with_broken = lines("one.png", "nope.png"), lines("one.png", "fake.jpg")
    assert with_missing == with_broken and with_missing[0].startswith("one.png\t")
    alone = lines("one.png")
    assert len(alone) == 1 and not alone[0].startswith("one.png")
    assert with_missing[0] == f"one.png\t{alone[0]}"


# -- item 5: --explain must be a folder, checked before any work --------------------------------
def test_explain_into_a_file_is_a_usage_error(one: Path, tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"never read: the options are checked first")
    result = run_cli("caption", str(one / "one.png"), "--explain", str(one / "fake.jpg"),
                     "--checkpoint", "model.ckpt", cwd=tmp_path)
    _usage_error(result, "--explain")
    assert "is a file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- item 9: a wrong command line exits 2, and says what was wrong ------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["train", "decoder"], "'decoder' is not of the form key=value"),
    (["train", "decoder.nope=1"], "unknown setting 'decoder.nope'"),
    (["config", "show", "decoder.celll=gru"], "did you mean decoder.cell"),
    (["config", "show", "decoder.hidden_dim=abc"], "bad value for decoder.hidden_dim: 'abc'"),
    (["config", "show", "decoder.cell=xyz"], "decoder.cell"),
    (["pretrain", "trainer.max_epochs=0"], "trainer.max_epochs"),
    (["caption", "x.png", "--n-best", "5", "--beam-size", "2"], "n_best=5 needs beam_size >= 5"),
    (["data", "shapes", "--out", "d", "--max-objects", "6"], "--max-objects: must be from 1 to 5"),
])
def test_wrong_command_lines_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    _usage_error(result, needle)
    assert "bad config key" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_bad_config_file_is_still_an_error_not_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("decoder:\n  cell: xyz\n")
    result = run_cli("config", "show", "--config", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "decoder.cell" in result.stderr


def test_config_help_says_the_overrides_are_optional() -> None:
    result = subprocess.run([*CAPTIONER, "config", "--help"], capture_output=True, text=True)
    listed = [line for line in result.stdout.splitlines() if line.strip().startswith("key=value")]
    assert listed and "optional" in listed[0]
    assert "positional arguments:\n  {show}         what to do\n  key=value" not in result.stdout


# -- item 10: messages in plain words ----------------------------------------------------------
@pytest.mark.slow
def test_empty_folder_and_plurals(best: Path, one: Path) -> None:
    result = run_cli("caption", "empty", "--checkpoint", str(best), cwd=one)
    assert result.returncode == 1
    assert "empty: no images in this folder" in result.stderr
    assert "1 of 1 images" not in result.stderr and "1 images" not in result.stderr
    result = run_cli("caption", "one.png", "fake.jpg", "--checkpoint", str(best), cwd=one)
    assert result.returncode == 3 and "1 of 2 images could not be captioned" in result.stderr


def test_a_file_that_is_no_checkpoint_says_so(one: Path) -> None:
    result = run_cli("evaluate", "--checkpoint", str(one / "one.png"), cwd=one)
    assert result.returncode == 1 and "pop from empty list" not in result.stderr
    assert "not a readable checkpoint" in result.stderr and "PNG image" in result.stderr


@pytest.mark.slow
def test_evaluate_an_unknown_split_lists_the_splits(best: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", "--checkpoint", str(best), "--split", "nope", "--out",
                     str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 1 and "split 'nope'" in result.stderr
    assert "test, train, val" in result.stderr


def test_data_shapes_refuses_a_foreign_folder_before_saying_it_writes(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("keep")
    result = run_cli("data", "shapes", "--out", "foreign", "--num-train", "1", "--num-val", "1",
                     "--num-test", "1", cwd=tmp_path)
    assert result.returncode == 1 and "not a shapes dataset" in result.stderr
    assert "writing" not in result.stderr


# -- item 12: shell completion offers the settings and their choices ----------------------------
def _complete(line: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    subprocess.run(CAPTIONER, env=env, cwd=tmp_path, capture_output=True, timeout=60)
    return out.read_text().split("\n") if out.exists() else []


def test_completion_offers_settings_and_their_choices(tmp_path: Path) -> None:
    keys = _complete("captioner train decoder.c", tmp_path)
    assert "decoder.cell=" in keys
    assert any(k.startswith("data.shapes.") for k in _complete("captioner config show data.", tmp_path))
    cells = _complete("captioner train decoder.cell=", tmp_path)
    assert {"decoder.cell=lstm", "decoder.cell=gru", "decoder.cell=rnn"} <= set(cells)
    assert "eval.meteor=false" in _complete("captioner train eval.meteor=", tmp_path)


# -- item 13: nothing generated is kept in the repository ----------------------------------------
def test_no_checkpoint_is_committed_and_none_can_be() -> None:
    root = REPO
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert not [f for f in listed.stdout.splitlines() if f.endswith((".ckpt", ".pt", ".pth"))
                and not f.startswith("captioner/")]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "checkpoints/epoch=2-step=3.ckpt",
                              "lightning_logs/version_0/hparams.yaml"],
                             cwd=root, capture_output=True, text=True)
    assert len(ignored.stdout.splitlines()) == 2
