"""Runs that never lose work: killed with SIGKILL after a checkpoint, resumed, they end exactly
where an uninterrupted run ends; a checkpoint from elsewhere starts a run folder of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import wait_until
from helpers.cli import TINY, run_cli

from captioner.model.checkpoint import load_checkpoint
from captioner.training.adapters import read_rows

pytestmark = pytest.mark.slow
RUN = [*TINY, "trainer.max_epochs=4", "--no-eval"]


def _train_killed_after_first_checkpoint(workdir: Path) -> int:
    """`captioner train` in a subprocess, SIGKILLed the moment its first checkpoint exists."""
    last = workdir / "runs" / "shapes" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "captioner", "train", *RUN], cwd=workdir,
                               env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: last.exists() or process.poll() is not None, 300, f"{last}")
    process.send_signal(signal.SIGKILL)
    return process.wait()


def _fingerprint(checkpoint: Path) -> tuple[int, list[torch.Tensor]]:
    loaded = load_checkpoint(checkpoint)
    return loaded["global_step"], [loaded["state_dict"][k] for k in sorted(loaded["state_dict"])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("whole")
    result = run_cli("train", *RUN, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "runs" / "shapes"


def test_killed_then_resumed_ends_with_the_uninterrupted_weights_and_log(
        uninterrupted: Path, tmp_path: Path) -> None:
    assert _train_killed_after_first_checkpoint(tmp_path) == -signal.SIGKILL
    run = tmp_path / "runs" / "shapes"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] < 3  # killed before the end
    resumed = run_cli("train", "--resume", str(run / "checkpoints" / "last.ckpt"), "--no-eval", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    step, weights = _fingerprint(run / "checkpoints" / "last.ckpt")
    whole_step, whole_weights = _fingerprint(uninterrupted / "checkpoints" / "last.ckpt")
    assert step == whole_step
    assert all(torch.equal(a, b) for a, b in zip(weights, whole_weights, strict=True))
    # The metrics log holds the whole history, before and after the kill, as if never stopped.
    assert read_rows(run / "logs" / "metrics.csv") == read_rows(uninterrupted / "logs" / "metrics.csv")
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_outside_a_run_folder_continues_in_a_new_one(uninterrupted: Path,
                                                                   tmp_path: Path) -> None:
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    copy = downloads / "x.ckpt"
    copy.write_bytes((uninterrupted / "checkpoints" / "last.ckpt").read_bytes())
    result = run_cli("train", "--resume", str(copy), "trainer.max_epochs=5", "--no-eval", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in downloads.iterdir()) == ["x.ckpt"]  # nothing written beside it
    assert "continuing it in runs/shapes" in result.stderr
    assert load_checkpoint(tmp_path / "runs" / "shapes" / "checkpoints" / "last.ckpt")["epoch"] == 4


def test_a_column_that_starts_after_the_resume_step_is_dropped(tmp_path: Path) -> None:
    from captioner.training.adapters import RunLog

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text("epoch,step,a,b\n0,1,1.0,\n0,5,,2.0\n")
    RunLog(tmp_path, resume_step=3)  # b's first value came after step 3: it crashed the rewrite
    assert read_rows(logs / "metrics.csv") == [{"epoch": "0", "step": "1", "a": "1.0"}]


def test_a_crafted_checkpoints_folder_and_name_are_not_followed(uninterrupted: Path, tmp_path: Path) -> None:
    """Issue 22 item 17: outside a run folder, a checkpoint's output_dir and name decided where
    the resumed run wrote (name ../../../escape_dir wrote three folders above the runs)."""
    saved = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (tmp_path / "work" / "deep" / "er").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    saved["hyper_parameters"]["config"]["output_dir"] = str(elsewhere)
    torch.save(saved, tmp_path / "moved.ckpt")
    result = run_cli("train", "--resume", str(tmp_path / "moved.ckpt"), "trainer.max_epochs=5", "--no-eval",
                     cwd=tmp_path / "work")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not elsewhere.exists() and (tmp_path / "work" / "runs" / "shapes" / "config.yaml").is_file()

    saved["hyper_parameters"]["config"]["name"] = "../../../escape_dir"
    torch.save(saved, tmp_path / "crafted.ckpt")
    result = run_cli("train", "--resume", str(tmp_path / "crafted.ckpt"), "--no-eval",
                     cwd=tmp_path / "work" / "deep" / "er")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "crafted.ckpt: bad configuration: name='../../../escape_dir'" in result.stderr
    assert not list(tmp_path.rglob("escape_dir"))
