"""Where the package keeps generated data and feature caches."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CAPTIONER_CACHE"


def default_cache_dir() -> Path:
    """$CAPTIONER_CACHE, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "captioner"
