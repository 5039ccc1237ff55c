"""Where the package keeps generated data and feature caches, and which output folders it may
write into."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.errors import CaptionerError

CACHE_ENV = "CAPTIONER_CACHE"


def default_cache_dir() -> Path:
    """$CAPTIONER_CACHE, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "captioner"


def check_out_dir(out_dir: Path, names: tuple[str, ...], *, marker: str, command: str) -> None:
    """Refuse to write `names` into out_dir where one is there already and the folder holds no
    `marker` (the file an earlier run of `command` wrote there), so nothing a user keeps, such as
    an evaluation folder's report, is overwritten."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CaptionerError(f"--out {out_dir}: is a file, not a folder")
    if (out_dir / marker).is_file():
        return
    taken = [name for name in names if (out_dir / name).exists()]
    if taken:
        raise CaptionerError(f"--out {out_dir}: {taken[0]} is there already and not from an "
                             f"earlier {command}; choose a new or empty folder")
