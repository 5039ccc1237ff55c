"""A frozen run's encoder, kept once per run folder and named, not copied, by its checkpoints.

A frozen CNN never changes while the decoder trains, so writing its half gigabyte into every
checkpoint only fills the disk. The run folder keeps it once, as `encoder.pth` beside
`checkpoints/` (a hard link to the file the run loaded it from, where the file system allows, so
the cache and the run share one copy), and each checkpoint records that file's name and SHA-256
in place of the weights. Opening a checkpoint finds the file, checks the hash and puts the
weights back, so every reader of a checkpoint (caption, evaluate, diff, serve, resume) still gets
a whole model from a checkpoint path alone, and a run folder copied elsewhere still captions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.model.encoder import VGGEncoder, encoder_state, export_weights, read_weights
from captioner.util.atomic import same_file

ENCODER_FILE = "encoder.pth"
RECORD = "captioner_encoder"  # the checkpoint's entry naming the file
PREFIX = "model.encoder."  # where the LightningModule keeps the encoder's weights
_verified: dict[tuple, str] = {}  # (path, inode, size, mtime) -> SHA-256, for this process


def sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(1 << 22):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


@dataclass(frozen=True)
class StoredEncoder:
    """The run folder's encoder file and its hash, as checkpoints record them."""

    path: Path
    digest: str

    def record(self) -> dict[str, Any]:
        return {"file": ENCODER_FILE, "sha256": self.digest, "bytes": self.path.stat().st_size,
                "source": str(self.path.resolve())}


def store(run_dir: Path, encoder: VGGEncoder, source: Path | None, meta: dict[str, Any]) -> StoredEncoder:
    """Put the run's encoder in run_dir/encoder.pth: the file it was loaded from (`source`),
    linked or copied, or else (random or ImageNet weights held in memory) exported."""
    target = run_dir / ENCODER_FILE
    if source is not None and source.resolve() != target.resolve():
        same_file(source.resolve(), target)  # resolved: a link to a symbolic link would break
    elif source is None:
        export_weights(encoder, target, meta)
    return StoredEncoder(target, sha256(target))


def strip(checkpoint: dict[str, Any]) -> None:
    """Take the encoder's weights out of a checkpoint being saved: its record, written with the
    checkpoint's other entries (model/checkpoint.py's CheckpointMeta), names the file instead."""
    state = checkpoint["state_dict"]
    for name in [k for k in state if k.startswith(PREFIX)]:
        del state[name]


def restore(checkpoint: dict[str, Any], path: Path) -> Path | None:
    """Put a checkpoint's recorded encoder back into its weights; the file used, or None when the
    checkpoint holds its encoder itself (fine-tuned runs, and every checkpoint before 0.3)."""
    record = checkpoint.get(RECORD)
    if not isinstance(record, dict):
        return None
    found = locate(record, path)
    state = encoder_state(read_weights(found, what=f"{path}: its encoder"))
    checkpoint["state_dict"].update({PREFIX + k: v for k, v in state.items()})
    return found


def locate(record: dict[str, Any], checkpoint: Path) -> Path:
    """The encoder file a checkpoint names, checked against its hash: beside the run's
    checkpoints/ folder, beside the checkpoint itself, or where the run found it."""
    name, digest = str(record.get("file", ENCODER_FILE)), str(record.get("sha256", ""))
    if os.path.basename(name) != name or not name:
        raise CaptionerError(f"{checkpoint}: its encoder record names {name!r}, not a file name")
    folder = checkpoint.resolve().parent
    candidates = [folder.parent / name, folder / name]
    if isinstance(record.get("source"), str):
        candidates.append(Path(record["source"]))
    altered = None
    for candidate in candidates:
        if candidate.is_file():
            if sha256(candidate) == digest:
                return candidate
            altered = altered or candidate
    if altered is not None:
        raise CaptionerError(f"{altered}: this encoder file is not the one {checkpoint} was trained with "
                             "(its SHA-256 differs): it was altered or replaced")
    raise CaptionerError(f"{candidates[0]}: missing; {checkpoint} keeps its frozen encoder in this "
                         "file beside checkpoints/ (copy or move the run folder whole)")
