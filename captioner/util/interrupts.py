"""Ctrl-C held off while a write finishes: a checkpoint cut short is an epoch of work lost, and a
run folder removed around a write in flight loses the run.

Only the main thread receives signals; elsewhere the block runs as it is.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def held_interrupt(deliver: bool = True) -> Iterator[list[FrameType | None]]:
    """Run the block to its end; a Ctrl-C that came meanwhile is raised once it is done, or, with
    `deliver=False`, left for the caller to act on: the list yielded is then non-empty."""
    pending: list[FrameType | None] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, previous)
    if not pending or previous == signal.SIG_IGN or not deliver:
        if previous == signal.SIG_IGN:
            pending.clear()  # Ctrl-C was ignored before: it stays ignored
        return
    if callable(previous):
        previous(signal.SIGINT, pending[0])  # Python's default handler raises KeyboardInterrupt
    else:
        raise KeyboardInterrupt
