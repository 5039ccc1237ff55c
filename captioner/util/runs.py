"""Run folders: runs/<name>/{checkpoints,logs,config.yaml,eval-*}, and which run is the latest.

A run folder is claimed with mkdir, which fails if the folder exists, so two runs started at the
same moment with the same name get two folders. Only the process of global rank 0 claims one: the
other processes of a distributed run (DDP ranks, torchrun or srun tasks, on any node) write
nothing into the run folder, so they never need to know its name before rank 0 tells them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from captioner.errors import CaptionerError, Interrupted
from captioner.util import atomic

LATEST = "LATEST"
CHECKPOINTS = "checkpoints"


def global_rank() -> int:
    """This process's rank across all nodes, as the launcher announced it (0 when launched by hand).

    torchrun sets RANK, srun SLURM_PROCID; Lightning's own launcher sets NODE_RANK and LOCAL_RANK
    for the processes it starts (the local-rank arithmetic only tells zero from non-zero).
    """
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", "0") or 0) + int(os.environ.get("LOCAL_RANK", "0") or 0)


def claim_run_dir(output_dir: Path, name: str) -> Path:
    """Create and return runs/<name>, or runs/<name>-2, -3... when that name is taken."""
    output_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = output_dir / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def discard_run_dir(run_dir: Path) -> bool:
    """Remove a run folder this process claimed, if it holds no checkpoint; True if it was removed."""
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in checkpoints.iterdir()):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


@contextmanager
def kept_on_failure(run_dir: Path, claimed: bool, command: str) -> Iterator[None]:
    """Run the block that trains into `run_dir`; if it fails, keep the folder only if it holds a
    checkpoint (then it is the latest run), and turn Ctrl-C into Interrupted with the exact
    command that continues (`command` + the checkpoint)."""
    try:
        yield
    except BaseException as err:
        last = run_dir / CHECKPOINTS / "last.ckpt"
        kept = global_rank() == 0 and not (claimed and discard_run_dir(run_dir)) and last.is_file()
        if kept:
            mark_latest(run_dir)
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(f"interrupted; continue with: {command} --resume {last.resolve()}" if kept else
                              "interrupted before the first checkpoint; nothing was kept") from None
        raise


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
