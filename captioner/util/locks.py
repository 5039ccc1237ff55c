"""Advisory file locks, so that processes sharing a cache (DDP ranks, nodes, two runs) take turns.

The kernel releases a lock when its holder closes the file or dies, so a crashed process never
leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def flock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (yield True), or yield False at once if it is taken and not `wait`."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            locked = True
        except BlockingIOError:
            locked = False
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warnings.warn(f"{path.parent}: this file system has no file locks; processes sharing this "
                          "folder at once may repeat work", stacklevel=3)
            locked = True
        yield locked
