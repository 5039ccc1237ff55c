"""Run folders: runs/<name>/{checkpoints,logs,config.yaml,eval-*}, and which run is the latest.

A run folder is claimed with mkdir, which fails if the folder exists, so two runs started at the
same moment with the same name get two folders. Only the process of global rank 0 claims one: the
other processes of a distributed run (DDP ranks, torchrun or srun tasks, on any node) write
nothing into the run folder, so they never need to know its name before rank 0 tells them.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from captioner.errors import CaptionerError, Interrupted
from captioner.util import atomic
from captioner.util.launch import launch
from captioner.util.paths import MARK, check_out_dir, claim_out_dir, read_mark

LATEST = "LATEST"
CHECKPOINTS = "checkpoints"


def claim_run_dir(output_dir: Path, name: str) -> Path:
    """Create and return runs/<name>, or runs/<name>-2, -3... when that name is taken.

    A folder a run claimed and was killed in before its first checkpoint (nothing in it but its
    own config.yaml, as the mark proves, and no process holding it) is taken again, not skipped.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = output_dir / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            if _retake(candidate):
                return candidate
            n += 1
            continue
        _hold(candidate)  # held before the mark exists, so no one takes the folder meanwhile
        claim_out_dir(candidate, RUN_FILES, command=RUN_COMMAND)
        return candidate


# What a new run writes first; a folder holding no more than these (checkpoints/ and logs/
# empty) is a run that never reached its first checkpoint.
RUN_FILES = ("config.yaml", CHECKPOINTS, "logs")
RUN_COMMAND = "train"
_LOCK = ".run.lock"
_held: dict[Path, IO[str]] = {}  # run folders this process holds, with their open lock files


def _hold(run_dir: Path) -> bool:
    """Lock run_dir for as long as this process lives (the kernel drops the lock when it dies);
    False if another process holds it."""
    lock = open(run_dir / _LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return False
    _held[run_dir] = lock
    return True


def release(run_dir: Path) -> None:
    """Let go of a run folder this process claimed (its run has ended)."""
    lock = _held.pop(run_dir, None)
    if lock is not None:
        lock.close()


def _retake(run_dir: Path) -> bool:
    """Whether run_dir is a folder a killed run left before its first checkpoint, now held here."""
    if run_dir.is_symlink() or not run_dir.is_dir() or read_mark(run_dir, RUN_COMMAND) is None:
        return False
    try:
        check_out_dir(run_dir, RUN_FILES, command=RUN_COMMAND)
    except CaptionerError:
        return False
    if not _only_early_files(run_dir) or not (run_dir / _LOCK).is_file() or not _hold(run_dir):
        return False
    if not _only_early_files(run_dir):  # it changed before the lock was ours
        release(run_dir)
        return False
    return True


def _only_early_files(run_dir: Path) -> bool:
    for path in run_dir.iterdir():
        if path.name in (MARK, _LOCK, "config.yaml") and path.is_file() and not path.is_symlink():
            continue
        if path.name in (CHECKPOINTS, "logs") and path.is_dir() and not path.is_symlink() \
                and not any(path.iterdir()):
            continue
        return False
    return True


def discard_run_dir(run_dir: Path) -> bool:
    """Remove a run folder this process claimed, if it holds no checkpoint; True if it was removed."""
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in checkpoints.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


@contextmanager
def kept_on_failure(run_dir: Path, claimed: bool, command: str, *, what: str = "training",
                    latest: bool = True) -> Iterator[None]:
    """Run the block that trains into `run_dir`; if it fails, keep the folder only if it holds a
    checkpoint (then, with `latest`, it is the latest run), and turn Ctrl-C into Interrupted saying
    what was kept and the exact command that continues (`command` + the checkpoint). An
    Interrupted from a stage before training (the data, the cached encoder, the features) already
    says what that stage kept."""
    try:
        yield
    except BaseException as err:
        last = run_dir / CHECKPOINTS / "last.ckpt"
        rank0 = launch().rank == 0
        removed = rank0 and claimed and discard_run_dir(run_dir)
        kept = rank0 and not removed and last.is_file()
        if kept and latest:
            mark_latest(run_dir)
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(_interrupted(run_dir, what, command, kept, removed)) from None
        raise
    finally:
        release(run_dir)


def _interrupted(run_dir: Path, what: str, command: str, kept: bool, removed: bool) -> str:
    last = (run_dir / CHECKPOINTS / "last.ckpt").resolve()
    if kept:
        return (f"interrupted during {what}; kept {run_dir.resolve()} with its checkpoint after "
                f"epoch {_epochs_done(last)}: continue with: {command} --resume {last}")
    if removed:
        return (f"interrupted during {what}, before its first checkpoint: removed {run_dir.resolve()}; "
                "run the same command again to start afresh")
    return f"interrupted during {what}, before its first checkpoint; nothing was kept"


def _epochs_done(checkpoint: Path) -> int:
    import torch  # here: the command line reads this module before torch is needed

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1


def mark_latest(run_dir: Path) -> None:
    atomic.write_text(run_dir.parent / LATEST, run_dir.name + "\n")


def best_checkpoint(run_dir: Path) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / CHECKPOINTS / name).is_file():
            return run_dir / CHECKPOINTS / name
    raise CaptionerError(f"no checkpoint in {run_dir / CHECKPOINTS}")


def latest_checkpoint(output_dir: Path = Path("runs")) -> Path:
    """The latest run's best checkpoint, or an error telling the user to train first."""
    marker = output_dir / LATEST
    if not marker.is_file():
        raise CaptionerError(
            f"no trained model found ({marker.resolve()} is missing): run `captioner train` first, "
            "pass --checkpoint PATH, or --runs DIR where your runs are"
        )
    run_dir = output_dir / marker.read_text(encoding="utf-8").strip()
    if not run_dir.is_dir():
        raise CaptionerError(f"{marker} names {run_dir}, which does not exist: pass --checkpoint")
    return best_checkpoint(run_dir)


def run_dir_of(checkpoint: Path) -> Path | None:
    """runs/<name> for runs/<name>/checkpoints/x.ckpt, when the checkpoint lives in a run folder."""
    parent = checkpoint.resolve().parent
    if parent.name == CHECKPOINTS and (parent.parent / "config.yaml").is_file():
        return parent.parent
    return None
