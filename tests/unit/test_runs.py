"""Run folders: claimed atomically, created by rank 0 only, removed when a run fails before its
first checkpoint; and atomic writes that reach the disk."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from helpers.cli import TINY

from captioner.util import atomic
from captioner.util.runs import claim_run_dir


def test_runs_started_together_get_a_folder_each(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=8) as pool:
        folders = list(pool.map(claim_run_dir, [tmp_path] * 16, ["shapes"] * 16))
    assert len(set(folders)) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["shapes", *(f"shapes-{n}" for n in range(2, 17))])


def test_only_global_rank_zero_claims_a_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from captioner.config import load_config
    from captioner.training.train import new_run

    environment = dict(os.environ)
    config = load_config(None, [f"output_dir={tmp_path / 'runs'}"])
    monkeypatch.setenv("RANK", "4")  # torchrun's fifth process, on another node say
    start = new_run(config)
    assert not start.claimed and not (tmp_path / "runs").exists()
    monkeypatch.setenv("RANK", "0")
    assert new_run(config).claimed and (tmp_path / "runs" / "shapes").is_dir()
    # The folder's name reaches the other ranks through the trainer, not the environment.
    assert dict(os.environ) == environment | {"RANK": "0"}


def test_atomic_writes_reach_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_json(tmp_path / "done.json", {"ok": True})
    assert any(".done.json." in path for path in synced)  # the file, before its rename
    assert str(tmp_path) in synced  # and the folder, after it


def _claim_then_die(output_dir: Path, files: dict[str, str]) -> None:
    """A process that claims runs/shapes, writes `files` into it and is SIGKILLed."""
    import subprocess
    import sys

    code = ("import os, signal; from pathlib import Path; from captioner.util.runs import claim_run_dir\n"
            f"d = claim_run_dir(Path({str(output_dir)!r}), 'shapes')\n"
            f"for name, text in {files!r}.items(): (d / name).write_text(text)\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9


def test_a_run_killed_before_its_first_checkpoint_leaves_a_folder_the_next_run_takes(tmp_path: Path) -> None:
    """Issue 22 item 19: runs/NAME with only the killed run's config.yaml made the next run NAME-2."""
    _claim_then_die(tmp_path, {"config.yaml": "name: shapes\n"})
    assert claim_run_dir(tmp_path, "shapes") == tmp_path / "shapes"
    assert claim_run_dir(tmp_path, "shapes") == tmp_path / "shapes-2"  # held by this process now


def test_a_folder_with_anything_else_is_not_taken(tmp_path: Path) -> None:
    _claim_then_die(tmp_path, {"config.yaml": "name: shapes\n", "notes.txt": "mine"})
    assert claim_run_dir(tmp_path, "shapes") == tmp_path / "shapes-2"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("a user's folder, no mark")
    assert claim_run_dir(tmp_path, "other") == tmp_path / "other-2"
    assert (tmp_path / "other" / "config.yaml").read_text() == "a user's folder, no mark"


def test_a_rank_other_than_0_gets_no_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train() on every rank of a distributed run: rank 0 gets the TrainResult, the others None
    (the command line reports on rank 0 alone)."""
    from captioner.config import load_config
    from captioner.training import train

    best = tmp_path / "best.ckpt"
    monkeypatch.setattr(train, "_train", lambda start: best)  # the fit itself is tested elsewhere
    config = load_config(None, [f"output_dir={tmp_path / 'runs'}"])
    monkeypatch.setenv("RANK", "1")
    assert train.train(config, evaluate_after=False) is None
    monkeypatch.setenv("RANK", "0")
    result = train.train(config, evaluate_after=False)
    assert result is not None and result.best == best and result.run_dir == tmp_path / "runs" / "shapes"


@pytest.mark.slow
def test_train_then_self_critical_from_its_best_checkpoint(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """train() with scst.epochs > 0: the cross-entropy run, then a self-critical run in <name>-scst
    that starts from the first run's best checkpoint (named by rank 0, on every rank)."""
    from captioner.config import load_config
    from captioner.training.train import train

    monkeypatch.chdir(tmp_path)
    config = load_config(None, [*TINY, "encoder.weights=none", "encoder.mode=frozen", "output_dir=runs",
                                "scst.epochs=1"])
    result = train(config, evaluate_after=False)
    assert result is not None and result.before is not None
    assert result.before.run_dir == Path("runs") / "shapes" and result.run_dir == Path("runs") / "shapes-scst"
    assert result.best.is_file() and result.before.best == Path("runs/shapes/checkpoints/best.ckpt")


def test_ctrl_c_while_a_run_folder_is_claimed_removes_it_with_the_usual_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands between the folder's mkdir and its lock and mark (the signal a user
    sends the moment runs/NAME appears) is held until the claim is whole, then handled as one
    before the first checkpoint: the folder goes, and the line says so."""
    from captioner.config import load_config
    from captioner.errors import Interrupted
    from captioner.training import train as training

    real = training.claim_run_dir

    def claim_interrupted(output_dir: Path, name: str) -> Path:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the claim is under way
        return real(output_dir, name)

    monkeypatch.setattr(training, "claim_run_dir", claim_interrupted)
    config = load_config(None, [f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(Interrupted) as caught:
        training.new_run(config)
    run = tmp_path / "runs" / "shapes"
    assert str(caught.value) == (f"interrupted during training, before its first checkpoint: removed "
                                 f"{run.resolve()}; run the same command again to start afresh")
    assert not run.exists()
