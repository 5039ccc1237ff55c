"""What several test modules share: building inputs (COCO archives, reports, images, imports),
running the command line (in-process or in a fresh process), a server under test, and reading
the shapes dataset back. Fixtures stay in conftest.py; these are plain functions and data."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], object], timeout: float = 60, what: str = "the condition") -> None:
    """Poll `condition` until it is true: for what only another process can signal (a file it
    writes, a line it prints); in-process events use threading or asyncio events instead."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
