"""Run folders: runs/<name>/{checkpoints,logs,config.yaml,eval}, and which run is the latest."""

from __future__ import annotations

from pathlib import Path

from captioner import atomic
from captioner.errors import CaptionerError

LATEST = "LATEST"


def new_run_dir(output_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3... when an earlier run already holds that name."""
    candidate, n = output_dir / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = output_dir / f"{name}-{n}"
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def mark_latest(run_dir: Path) -> None:
    atomic.write_text(run_dir.parent / LATEST, run_dir.name + "\n")


def best_checkpoint(run_dir: Path) -> Path:
    for name in ("best.ckpt", "last.ckpt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise CaptionerError(f"no checkpoint in {run_dir / 'checkpoints'}")


def latest_checkpoint(output_dir: Path = Path("runs")) -> Path:
    """The latest run's best checkpoint, or an error telling the user to train first."""
    marker = output_dir / LATEST
    if not marker.is_file():
        raise CaptionerError(
            f"no trained model found ({marker} is missing): run `captioner train` first, "
            "or pass --checkpoint PATH"
        )
    run_dir = output_dir / marker.read_text().strip()
    if not run_dir.is_dir():
        raise CaptionerError(f"{marker} names {run_dir}, which does not exist: pass --checkpoint")
    return best_checkpoint(run_dir)


def run_dir_of(checkpoint: Path) -> Path | None:
    """runs/<name> for runs/<name>/checkpoints/x.ckpt, when the checkpoint lives in a run."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else None
