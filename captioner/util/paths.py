"""Where the package keeps generated data and feature caches, and which output folders it may
write into."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.util.atomic import TEMP_SUFFIX, is_temp_file, write_json
from captioner.version import __version__

CACHE_ENV = "CAPTIONER_CACHE"


def default_cache_dir() -> Path:
    """$CAPTIONER_CACHE, else $XDG_CACHE_HOME/captioner, else ~/.cache/captioner."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "captioner"


# The mark a command leaves in a folder it wrote: which files it wrote, with their sizes and SHA-256,
# so a later run replaces only what is provably its own (a file merely named metrics.json is not).
MARK = ".captioner-written.json"
MARK_SCHEMA = "captioner.written"
MARK_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WrittenFile:
    """One file a command wrote: its size in bytes and the SHA-256 of its contents."""

    size: int
    sha256: str


@dataclass(frozen=True)
class WrittenMark:
    """What MARK holds: the command, the captioner version that wrote it, every file it wrote
    (path relative to the folder, "/"-separated) and the names it was writing when it stopped
    (`pending`: set before the writes begin, emptied once they are done, so a killed run's
    half-written folder is still recognised as its own)."""

    command: str
    version: str
    files: dict[str, WrittenFile]
    pending: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"schema": MARK_SCHEMA, "schema_version": MARK_VERSION, "command": self.command,
                "version": self.version, "pending": list(self.pending),
                "files": {name: asdict(f) for name, f in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, data: Any) -> WrittenMark:
        """The mark in `data`; ValueError unless every field has its type."""
        if not (isinstance(data, dict) and data.get("schema") == MARK_SCHEMA
                and data.get("schema_version") == MARK_VERSION):
            raise ValueError("not a captioner mark")
        command, version, files, pending = (data.get(k) for k in ("command", "version", "files", "pending"))
        if not (isinstance(command, str) and isinstance(version, str) and isinstance(files, dict)
                and isinstance(pending, list) and all(isinstance(n, str) for n in pending)):
            raise ValueError("a field has the wrong type")
        records = {}
        for name, record in files.items():
            record = record if isinstance(record, dict) else {}
            size, digest = record.get("size"), record.get("sha256")
            if not (type(size) is int and size >= 0 and isinstance(digest, str) and len(digest) == 64):
                raise ValueError(f"bad record for {name!r}")
            records[name] = WrittenFile(size, digest)
        return cls(command, version, records, tuple(pending))


def file_record(path: Path) -> WrittenFile:
    """The size and SHA-256 of the regular file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return WrittenFile(path.stat().st_size, digest.hexdigest())


def read_mark(folder: Path, command: str) -> WrittenMark | None:
    """The mark `command` left in `folder`; None where there is none, it is not a captioner mark,
    or another command wrote it."""
    path = Path(folder) / MARK
    if path.is_symlink() or not path.is_file():
        return None
    try:
        mark = WrittenMark.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return mark if mark.command == command else None


def files_under(folder: Path, name: str) -> list[str] | None:
    """Every entry at or below folder/name as a relative "/"-separated path, links and other
    non-regular files included as they are (never followed); None if nothing is there."""
    top = Path(folder) / name
    if not os.path.lexists(top):
        return None
    if top.is_symlink() or not top.is_dir():
        return [name]
    found = [name + "/"] if not any(top.iterdir()) else []
    for root, dirs, files in os.walk(top):
        rel = Path(root).relative_to(folder).as_posix()
        found += [f"{rel}/{d}" for d in dirs if (Path(root) / d).is_symlink()]
        found += [f"{rel}/{f}" for f in files]
    return found


def proven_files(folder: Path, mark: WrittenMark | None) -> set[str]:
    """The files in `folder` the mark proves its command wrote: regular files (not links) of
    exactly the recorded size and SHA-256."""
    if mark is None:
        return set()
    proven = set()
    for name, record in mark.files.items():
        path = Path(folder) / name
        if ".." in Path(name).parts or Path(name).is_absolute() or path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_size == record.size and file_record(path) == record:
            proven.add(name)
    return proven


def _is_pending(name: str, mark: WrittenMark | None) -> bool:
    return mark is not None and any(name == p or name.startswith(p + "/") for p in mark.pending)


def check_out_dir(out_dir: Path, names: tuple[str, ...], *, command: str, option: str = "--out") -> None:
    """Refuse to write `names` into out_dir where anything at or below one of them is not
    provably from an earlier run of `command` (recorded in its MARK with size and SHA-256, or
    named in a run that was stopped while writing it), so nothing a user keeps is overwritten."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise CaptionerError(f"{option} {out_dir}: is a file or a link, not a folder")
    mark = read_mark(out_dir, command)
    proven = proven_files(out_dir, mark)
    for name in names:
        for entry in files_under(out_dir, name) or []:
            path = out_dir / entry
            ours = entry in proven or (_is_pending(entry, mark) and not path.is_symlink()
                                       and (path.is_file() or path.is_dir()))
            # An empty folder holds nothing to lose; a hidden temporary file is a killed write's.
            if not (ours or entry.endswith("/") or (_temp_name(path.name) and path.is_file())):
                raise CaptionerError(f"{option} {out_dir}: {entry} is there already and not from an "
                                     f"earlier {command}; choose a new or empty folder")


def claim_out_dir(out_dir: Path, names: tuple[str, ...], *, command: str,
                  option: str = "--out") -> set[str]:
    """check_out_dir, then mark `names` as being written and remove the temporary files a killed
    write of ours left beside them; returns the files an earlier run provably wrote."""
    check_out_dir(out_dir, names, command=command, option=option)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mark = read_mark(out_dir, command)
    proven = proven_files(out_dir, mark)
    earlier = {n: r for n, r in (mark.files.items() if mark else ()) if n in proven}
    _write_mark(out_dir, WrittenMark(command, __version__, earlier, tuple(names)))
    remove_temp_files(out_dir, names)
    return set(earlier)


def seal_out_dir(out_dir: Path, names: tuple[str, ...], *, command: str) -> None:
    """Record every regular file now at or below `names` in out_dir's mark, as `command`'s."""
    out_dir = Path(out_dir)
    files = {}
    for name in names:
        for entry in files_under(out_dir, name) or []:
            path = out_dir / entry
            if not path.is_symlink() and path.is_file() and not _temp_name(path.name):
                files[entry] = file_record(path)
    _write_mark(out_dir, WrittenMark(command, __version__, files))


def remove_temp_files(folder: Path, names: tuple[str, ...]) -> None:
    """Remove the temporary files (atomic_path's) a killed write of one of `names` left in
    `folder`, and only those."""
    wanted = {n.split("/")[0] for n in names} | {MARK}
    for path in Path(folder).iterdir():
        if any(is_temp_file(path, n) for n in wanted) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def _temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _write_mark(folder: Path, mark: WrittenMark) -> None:
    write_json(folder / MARK, mark.to_json())
