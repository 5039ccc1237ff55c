"""Removing files an earlier import wrote, and nothing else.

A manifest is a file in the user's folder: anyone may edit it, and a folder in the output may have
been swapped for a symbolic link to the user's own pictures since. So a file is removed only when
  - its name is one the import writes and stays inside the folder (no '..', not absolute);
  - no folder on the way to it is a symbolic link: each is opened relative to the one above
    with O_NOFOLLOW, and the file is unlinked relative to its folder's descriptor, so a link
    swapped in between a check and the removal is not followed either;
  - it is still the regular file the import stamped (size and modification time in nanoseconds):
    a user's file, or the import's file edited since, is left in place.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from captioner.data.importing.manifest import is_inside

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def stamp(path: Path) -> list[int]:
    """What proves a file is still the one written: [size, mtime in ns] of the file itself."""
    info = path.lstat()
    return [info.st_size, info.st_mtime_ns]


def remove_written(out: Path, names: Iterable[str], stamps: Mapping[str, Sequence[int] | None]) -> list[str]:
    """Delete each of `names` that is still the file its stamp describes, and the folders that
    leaves empty; return the names left in place (changed, unstamped, or behind a link)."""
    left = []
    root = os.open(out, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for name in sorted(names, reverse=True):
            if not _remove_one(root, name, stamps.get(name)):
                left.append(name)
    finally:
        os.close(root)
    return sorted(left)


def _remove_one(root: int, name: str, expected: Sequence[int] | None) -> bool:
    if not expected or not is_inside(name):
        return False
    *folders, leaf = PurePosixPath(name).parts
    fds = [root]
    try:
        for folder in folders:
            fds.append(os.open(folder, _FOLDER_FLAGS, dir_fd=fds[-1]))  # ELOOP on a link
        info = os.stat(leaf, dir_fd=fds[-1], follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or [info.st_size, info.st_mtime_ns] != list(expected):
            return False
        os.unlink(leaf, dir_fd=fds[-1])
    except FileNotFoundError:
        return True  # already gone
    except OSError:
        return False  # a link on the way, or no permission: left in place
    else:
        _remove_empty(fds, folders)
        return True
    finally:
        for fd in fds[1:]:
            os.close(fd)


def _remove_empty(fds: list[int], folders: list[str]) -> None:
    """Remove the folders on the way, deepest first, while they are empty."""
    for fd, folder in zip(reversed(fds[:-1]), reversed(folders)):
        try:
            os.rmdir(folder, dir_fd=fd)
        except OSError:
            return
