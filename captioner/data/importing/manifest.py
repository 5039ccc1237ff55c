"""The manifest of an imported dataset folder: which files the reader needs, which the import wrote.

`captioner train data.root=DIR` reads the split and caption file names from it, so an imported
folder needs no other data setting. Its list of written files is what lets a later import into
the same folder replace them (and nothing else), and its `complete` flag is set last, so a folder
whose import was interrupted is refused rather than half read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from captioner.errors import CaptionerError
from captioner.util.atomic import write_json

MANIFEST_NAME = "captioner_dataset.json"
MANIFEST_VERSION = 1


@dataclass
class Manifest:
    karpathy_json: str
    captions_json: list[str]
    instances_json: list[str] = field(default_factory=list)
    # Paths relative to the folder of every file the import wrote (the manifest itself excluded).
    files: list[str] = field(default_factory=list)
    # [size, mtime in ns] of each file as written: a later import replaces or removes a file only
    # while it still matches (remove.py), so a user's edit or a hand-added name is never lost.
    stamps: dict[str, list[int]] = field(default_factory=dict)
    complete: bool = False
    source: str = ""
    format: str = ""
    version: int = MANIFEST_VERSION


def read_manifest(root: Path) -> Manifest | None:
    """The manifest in `root`, None when there is none; an unreadable or unfinished one is an error."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**data)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
        raise CaptionerError(f"{path}: not a captioner dataset manifest ({err})") from err
    if manifest.version != MANIFEST_VERSION:
        raise CaptionerError(f"{path}: manifest version {manifest.version}, this captioner reads "
                             f"{MANIFEST_VERSION}; import the dataset again")
    if not isinstance(manifest.stamps, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(type(n) is int for n in v)
            for v in manifest.stamps.values()):
        raise CaptionerError(f"{path}: 'stamps' is not a map of file name to [size, mtime_ns]")
    for name in manifest.files:
        if not isinstance(name, str) or not is_inside(name):
            raise CaptionerError(f"{path}: lists {name!r}, which is not a path inside the folder")
    return manifest


def require_complete(root: Path, manifest: Manifest) -> Manifest:
    if not manifest.complete:
        raise CaptionerError(f"{root}: the import into this folder did not finish; run "
                             "`captioner data import` again")
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> None:
    write_json(root / MANIFEST_NAME, asdict(manifest))


def is_inside(name: str) -> bool:
    """A relative path that stays inside its folder (no '..', not absolute, not the manifest)."""
    path = PurePosixPath(name)
    return (bool(name) and not path.is_absolute() and ".." not in path.parts
            and name != MANIFEST_NAME)
