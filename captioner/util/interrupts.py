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
def held_interrupt() -> Iterator[None]:
    """Run the block to its end; a Ctrl-C that came meanwhile is raised once it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[FrameType | None] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if not pending or previous == signal.SIG_IGN:
        return
    if callable(previous):
        previous(signal.SIGINT, pending[0])  # Python's default handler raises KeyboardInterrupt
    else:
        raise KeyboardInterrupt
