"""The command line as people use it: pipes, Ctrl-C, stdin, folders, help, quiet output, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import wait_until
from helpers.cli import TINY, run_cli, run_cli_process
from PIL import Image

from captioner.config import Config, load_config, to_dict

CAPTIONER = [sys.executable, "-m", "captioner"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 6 images, one in a subfolder, one hidden, and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.png", "d.png", "sub/e.png", ".hidden.png"):
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _checkpoint(trained_run: Path) -> str:
    return str(trained_run / "runs" / "shapes" / "checkpoints" / "best.ckpt")


def test_a_closed_pipe_ends_quietly(trained_run: Path, photos: Path, tmp_path: Path) -> None:
    command = " ".join([*CAPTIONER, "caption", str(photos), "--recursive", "--batch-size", "1",
                        "--checkpoint", _checkpoint(trained_run), f"2>{tmp_path / 'err'}", "| head -1"])
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                            env=os.environ.copy())
    assert result.stdout.count("\n") == 1
    stderr = (tmp_path / "err").read_text()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_folders_stdin_and_hidden_files(trained_run: Path, photos: Path) -> None:
    flat = run_cli("caption", str(photos), "--checkpoint", _checkpoint(trained_run), cwd=trained_run)
    assert flat.returncode == 0, flat.stderr
    assert len(flat.stdout.splitlines()) == 4  # a, b, c, d: not the hidden one, not the subfolder's
    assert ("skipped 1 hidden file, 1 file in a subfolder (--recursive includes it), 1 file that is "
            "not an image") in flat.stderr
    deep = run_cli("caption", str(photos), "-r", "--checkpoint", _checkpoint(trained_run), cwd=trained_run)
    assert [Path(line.split("\t")[0]).name for line in deep.stdout.splitlines()] == [
        "a.png", "b.jpg", "c.png", "d.png", "e.png"]
    paths = f"{photos / 'a.png'}\n{photos / 'c.png'}\n"
    listed = run_cli("caption", "-", "--checkpoint", _checkpoint(trained_run), input=paths.encode(),
                     cwd=trained_run)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    piped = run_cli("caption", "-", "--format", "jsonl", "--checkpoint", _checkpoint(trained_run),
                    input=(photos / "a.png").read_bytes(), cwd=trained_run)
    assert piped.returncode == 0 and '"image": "<stdin>"' in piped.stdout


def test_the_api_expands_folders_as_the_cli_does(trained_run: Path, photos: Path) -> None:
    from captioner import Captioner

    captioner = Captioner.from_checkpoint(_checkpoint(trained_run), device="cpu")
    results = captioner.caption(photos)
    assert [Path(r.image).name for r in results] == ["a.png", "b.jpg", "c.png", "d.png"]
    assert all(r.ok and r.text for r in results)
    assert len(captioner.caption([photos], recursive=True)) == 5


def test_a_pixel_limit_refuses_large_images_undecoded(trained_run: Path, photos: Path) -> None:
    result = run_cli("caption", str(photos / "a.png"), "--max-pixels", "100", "--checkpoint",
                     _checkpoint(trained_run), cwd=trained_run)
    assert result.returncode == 1  # its only image failed
    assert "40x40 pixels is over the 100-pixel limit (--max-pixels)" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["evaluate", "--beam-size", "0"], "--beam-size: must be from 1 to 20, got 0"),
    (["evaluate", "--limit", "-3"], "--limit: must be at least 1, got -3"),
    (["caption", "x.png", "--top-k", "-1"], "--top-k: must be at least 0"),
    (["caption", "x.png", "--temperature", "0"], "--temperature: must be positive"),
])
def test_bad_numbers_are_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_empty_stdin_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"never read: the inputs are checked first")
    result = run_cli("caption", "-", "--checkpoint", "model.ckpt", input="\n\n", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no images given: standard input held no paths"


def test_help_shows_a_default_of_zero() -> None:
    from captioner.cli import build_parser

    caption = build_parser()._subparsers._group_actions[0].choices["caption"]
    assert "(default: 0.0)" in " ".join(caption.format_help().split())  # --length-penalty


def test_option_errors_come_before_torch_loads(tmp_path: Path) -> None:
    script = ("import sys\nfrom captioner.cli import main\n"
              "code = main(['caption', 'x.png', '--n-best', '5', '--beam-size', '2'])\n"
              "print(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["2", "False"]  # a wrong command line (issue 24 item 9)
    assert "n_best=5 needs beam_size >= 5" in result.stderr


def test_sampling_options_imply_sampling(trained_run: Path, photos: Path) -> None:
    result = run_cli("caption", str(photos / "a.png"), "--temperature", "0.7", "--seed", "3",
                     "--checkpoint", _checkpoint(trained_run), cwd=trained_run)
    assert result.returncode == 0 and "--temperature, --seed implies --sample" in result.stderr


def test_evaluate_names_its_split_and_scales(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli("evaluate", "--split", "val", "--limit", "3", "--out", str(tmp_path / "val"),
                     cwd=trained_run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("val metrics:") and "CIDEr-D on 0-10, the others 0-1" in result.stdout
    assert "captioning 3 images with beam 3" in result.stderr  # a stage line: stderr is no terminal


def test_config_show_prints_every_setting_with_its_meaning(tmp_path: Path) -> None:
    result = run_cli("config", "show", "decoder.cell=gru", cwd=tmp_path)
    assert result.returncode == 0
    assert "# Recurrent cell: lstm, gru or rnn (plain tanh).\n  cell: gru" in result.stdout
    shown = yaml.safe_load(result.stdout)
    assert to_dict(load_config(None, base=shown)) == to_dict(load_config(None, ["decoder.cell=gru"]))
    assert set(shown) == set(to_dict(Config()))


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell: str, tmp_path: Path) -> None:
    result = run_cli("completion", shell, cwd=tmp_path)
    assert result.returncode == 0 and "captioner" in result.stdout and len(result.stdout) > 200


@pytest.mark.slow
def test_train_keeps_stdout_for_results_and_stderr_free_of_noise(tmp_path: Path) -> None:
    result = run_cli_process("train", *TINY, "--no-eval", "name=quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["run folder", "best checkpoint"]
    for noise in ("litlogger", "LitLogger", "GPU available", "TPU available", "LeafSpec",
                  "module(s) in eval mode", "limit_train_batches", "weights_only"):
        assert noise not in result.stderr, noise
    assert "training: epoch 1/1" in result.stderr  # one line per epoch when not on a terminal
    quiet = run_cli_process("train", *TINY, "--no-eval", "name=quieter", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def _train_until(workdir: Path, wait_for: Path | None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A long tiny `captioner train`, running until `wait_for` exists (or it has started)."""
    # A shell starts background jobs with SIGINT ignored, and exec keeps it so: give the child
    # the default, as a terminal's foreground process has, whoever started pytest.
    process = subprocess.Popen([*CAPTIONER, "train", *TINY, "trainer.max_epochs=200", "--no-eval"],
                               cwd=workdir, env=env or os.environ.copy(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    target = wait_for or workdir / "runs" / "shapes"
    wait_until(lambda: target.exists() or process.poll() is not None, 300, f"{target} or the end of training")
    return process


@pytest.mark.slow
def test_ctrl_c_during_train_exits_130_with_the_resume_command(tmp_path: Path) -> None:
    last = tmp_path / "runs" / "shapes" / "checkpoints" / "last.ckpt"
    process = _train_until(tmp_path, last)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"interrupted during training; kept {last.parent.parent} with its checkpoint "
                           "after epoch ")  # tests/test_interrupts.py checks each stage's line whole
    assert line.endswith(f": continue with: captioner train --resume {last}")
    assert (tmp_path / "runs" / "LATEST").read_text().strip() == "shapes"  # caption finds it
    assert "Traceback" not in err and out == ""


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_keeps_nothing(tmp_path: Path) -> None:
    # An empty cache of its own: the dataset and the encoder take seconds to make, so the signal
    # lands well before the first checkpoint (with the session's warm cache it could come after).
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}
    process = _train_until(tmp_path, None, env)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith((
        "interrupted while generating the shapes dataset; nothing of it was kept",
        "interrupted while pretraining the encoder; nothing of it was kept",
        f"interrupted during training, before its first checkpoint: removed {tmp_path / 'runs' / 'shapes'};"))
    assert not (tmp_path / "runs" / "shapes").exists()
