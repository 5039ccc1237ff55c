"""Ctrl-C at each stage a user can interrupt (issue 24 item 8): a real process gets SIGINT while
it is paused at that stage; its last line says exactly what is on disk afterwards, and the
command it names to continue does continue."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import wait_until
from helpers.cli import TINY, run_cli

pytestmark = pytest.mark.slow
NO_ENCODER = [*TINY, "encoder.weights=none", "--no-eval"]

# `captioner ARGS` with one function wrapped: its nth call touches MARKER, then waits for GO (the
# test's Ctrl-C raises KeyboardInterrupt in that wait, unless the code holds Ctrl-C off meanwhile);
# "after" waits once the call returned instead.
_PAUSED = """
import importlib, sys, time
from pathlib import Path

spec, nth, when, marker, go, *argv = sys.argv[1:]
module_name, _, attr = spec.partition(":")
owner = importlib.import_module(module_name)
*parents, name = attr.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real, calls = getattr(owner, name), []

def pause():
    Path(marker).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.02)

def wrapper(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(nth) and when == "before":
        pause()
    result = real(*args, **kwargs)
    if len(calls) == int(nth) and when == "after":
        pause()
    return result

setattr(owner, name, wrapper)
from captioner.cli import main
sys.exit(main(argv))
"""


def interrupted_at(spec: str, args: list[str], cwd: Path, *, nth: int = 1, when: str = "before",
                   env: dict[str, str] | None = None) -> str:
    """Run `captioner args`, Ctrl-C it at the nth call of `spec`; its last stderr line (exit 130)."""
    marker, go = cwd / ".paused", cwd / ".go"
    marker.unlink(missing_ok=True)
    go.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, spec, str(nth), when, str(marker), str(go), *args], cwd=cwd,
        env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job has
    wait_until(lambda: marker.exists() or process.poll() is not None, 120, f"{marker}")
    assert marker.exists(), process.communicate(timeout=60)[1][-3000:]
    process.send_signal(signal.SIGINT)
    go.touch()
    out, err = process.communicate(timeout=120)
    marker.unlink()
    go.unlink()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and out == ""
    return err.strip().splitlines()[-1]


def own_cache(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}


def captioner(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command that continues after the interruption: no signal, so in this process."""
    return run_cli(*args, cwd=cwd, env=env)


def test_ctrl_c_while_generating_the_dataset_then_extracting_features(tmp_path: Path) -> None:
    env = own_cache(tmp_path)
    line = interrupted_at("captioner.data.shapes:_write_dataset", ["train", *NO_ENCODER], tmp_path, env=env)
    assert line == ("interrupted while generating the shapes dataset; nothing of it was kept: "
                    "run the same command again to generate it afresh")
    assert [p.name for p in (tmp_path / "cache" / "shapes").iterdir() if not p.name.endswith(".lock")] == []
    assert not (tmp_path / "runs" / "shapes").exists()

    line = interrupted_at("captioner.features.cache:_write_shard", ["train", *NO_ENCODER], tmp_path, env=env)
    (features,) = (tmp_path / "cache" / "features").glob("train-*")
    assert line == (f"interrupted while extracting features; 0 of 16 images' features are kept in "
                    f"{features}: run the same command again to continue")
    assert not list(features.glob("shard_*.ids.json")) and not (features / "meta.json").exists()
    assert not (tmp_path / "runs" / "shapes").exists()

    again = captioner("train", *NO_ENCODER, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generating the built-in shapes dataset" not in again.stderr  # the second run made it
    assert (features / "meta.json").is_file()


def _pretraining_folder(cache: Path) -> Path:
    (folder,) = (cache / "encoders").iterdir()
    return folder


def test_ctrl_c_during_the_cached_pretraining(tmp_path: Path) -> None:
    env = own_cache(tmp_path)
    args = ["train", *TINY, "pretrain.epochs=2", "pretrain.batch_size=8", "--no-eval"]
    line = interrupted_at("captioner.training.adapters:RunCheckpoints.on_train_start", args, tmp_path,
                          env=env)
    assert line == ("interrupted while pretraining the encoder; nothing of it was kept: "
                    "run the same command again to start it afresh")
    folder = _pretraining_folder(tmp_path / "cache")
    assert not list(folder.rglob("*.ckpt")) and not list(folder.rglob("*.pth"))
    assert not (tmp_path / "runs" / "shapes").exists()

    line = interrupted_at("captioner.training.adapters:RunCheckpoints.on_train_epoch_end", args, tmp_path,
                          when="after", env=env)
    assert line == (f"interrupted while pretraining the encoder; its checkpoint after epoch 1 is kept in "
                    f"{folder / 'checkpoints'}: run the same command again to resume the pretraining "
                    "from there")
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (folder / "encoder.pth").exists() and not (tmp_path / "runs" / "shapes").exists()

    again = captioner(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming the interrupted pretraining in {folder}" in again.stderr
    assert (folder / "encoder.pth").is_file()


def test_ctrl_c_during_captioner_pretrain(tmp_path: Path) -> None:
    args = ["pretrain", *TINY, "pretrain.epochs=2", "pretrain.batch_size=8"]
    run = tmp_path / "runs" / "shapes-pretrain"
    line = interrupted_at("captioner.training.adapters:RunCheckpoints.on_train_start", args, tmp_path)
    assert line == (f"interrupted during pretraining, before its first checkpoint: removed {run}; "
                    "run the same command again to start afresh")
    assert not run.exists()

    line = interrupted_at("captioner.training.adapters:RunCheckpoints.on_train_epoch_end", args, tmp_path,
                          when="after")
    last = run / "checkpoints" / "last.ckpt"
    assert line == (f"interrupted during pretraining; kept {run} with its checkpoint after epoch 1: "
                    f"continue with: captioner pretrain --resume {last}")
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert not (tmp_path / "runs" / "LATEST").exists()  # captioning must not take a classifier

    resumed = captioner(*shlex.split(line.split("continue with: ")[1])[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1 and (run / "encoder.pth").is_file()


def test_ctrl_c_during_training_and_while_a_checkpoint_is_written(tmp_path: Path) -> None:
    args = ["train", *NO_ENCODER, "trainer.max_epochs=3"]
    run = tmp_path / "runs" / "shapes"
    line = interrupted_at("captioner.training.adapters:RunCheckpoints.on_train_start", args, tmp_path)
    assert line == (f"interrupted during training, before its first checkpoint: removed {run}; "
                    "run the same command again to start afresh")
    assert not run.exists() and not (tmp_path / "runs" / "LATEST").exists()

    # Ctrl-C while epoch 2's checkpoint is being written: the write finishes, and is kept.
    line = interrupted_at("captioner.training.adapters:AtomicCheckpointIO.save_checkpoint", args,
                          tmp_path, nth=2)
    last = run / "checkpoints" / "last.ckpt"
    assert line == (f"interrupted during training; kept {run} with its checkpoint after epoch 2: "
                    f"continue with: captioner train --resume {last}")
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert (tmp_path / "runs" / "LATEST").read_text() == "shapes\n"
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]

    resumed = captioner(*shlex.split(line.split("continue with: ")[1])[1:], "--no-eval", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 2


def test_ctrl_c_during_the_evaluation_after_training(tmp_path: Path) -> None:
    args = ["train", *TINY, "encoder.weights=none"]
    line = interrupted_at("captioner.evaluation.evaluate:caption_split", args, tmp_path)
    run = tmp_path / "runs" / "shapes"
    best = run / "checkpoints" / "best.ckpt"
    assert line == (f"interrupted while evaluating; no complete report was written to {run / 'eval-test'}: "
                    f"continue with: captioner evaluate --checkpoint {best} --split test "
                    f"--out {run / 'eval-test'} --beam-size 3")
    assert best.is_file() and not (run / "eval-test" / "index.html").exists()

    again = captioner(*shlex.split(line.split("continue with: ")[1])[1:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "eval-test" / "index.html").is_file()
