"""Writing the imported dataset folder, without touching anything its user made.

    DIR/captioner_dataset.json          the manifest: what to read, what this import wrote
    DIR/dataset_karpathy.json           Karpathy-format split file (what captioner reads)
    DIR/annotations/captions_<split>.json   COCO-format captions, one file per split
    DIR/import_report.json              the validation report
    DIR/images/...                      copies of the images, only with --copy

The folder must be new, empty, or an earlier import's (it holds a manifest). A file there that
the manifest does not list, or that changed since it was stamped there, is never overwritten or
removed, and nothing is written or removed through a symbolic link (remove.py). The manifest is
written first listing both the old and the new files, and again last with only the new ones,
their stamps and `complete`, so an interrupted import leaves a folder the next import may still
replace and `captioner train` refuses to read.

DIR/.captioner_import.lock (empty) is held while an import runs, so a second import into the
same folder at once is refused instead of mixing the two; it stays, as the download's does.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from captioner.data.importing.manifest import (
    MANIFEST_NAME,
    Manifest,
    is_inside,
    read_manifest,
    write_manifest,
)
from captioner.data.importing.remove import remove_written, stamp
from captioner.errors import CaptionerError
from captioner.util.atomic import atomic_path, write_json
from captioner.util.console import say
from captioner.util.locks import flock

KARPATHY_NAME = "dataset_karpathy.json"
REPORT_NAME = "import_report.json"
SPLIT_ORDER = ("train", "restval", "val", "test")
LOCK_NAME = ".captioner_import.lock"
Earlier = dict[str, "list[int] | None"]  # the files an earlier import wrote -> their stamps


@dataclass
class ImportedImage:
    image_id: int
    name: str  # as the source writes it
    path: Path  # the image file found for it
    split: str
    captions: list[str]
    tokens: list[list[str]]
    size: tuple[int, int] | None = None  # (width, height), when the image was decoded


@contextmanager
def locked_folder(out: Path) -> Iterator[None]:
    """Create `out` if need be and hold its import lock; a folder created here is removed again
    when the import fails, so a failed import leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise CaptionerError(f"--out {out}: exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    try:
        with flock(lock, wait=False) as locked:
            if not locked:
                raise CaptionerError(f"--out {out}: another import into this folder is running (it "
                                     f"holds {lock}); wait for it to finish, then rerun")
            yield
    except BaseException:
        if created and not any(p.name != LOCK_NAME for p in out.iterdir()):
            lock.unlink(missing_ok=True)
            out.rmdir()
        raise


def claim_folder(out: Path) -> Earlier:
    """The files an earlier import wrote in `out` (none for a new or empty folder); else refuse."""
    manifest = read_manifest(out)
    if manifest is not None:
        return {name: manifest.stamps.get(name) for name in manifest.files}
    if any(p.name != LOCK_NAME for p in out.iterdir()):
        raise CaptionerError(f"--out {out}: folder is not empty and holds no earlier import "
                             f"({MANIFEST_NAME}); choose a new or empty folder")
    return {}


def could_write(name: str) -> bool:
    """Whether an import writes files of this name (an edited manifest may list any)."""
    return name in (KARPATHY_NAME, REPORT_NAME) or name.startswith(("annotations/captions_", "images/"))


def copy_name(image: ImportedImage) -> str:
    """Where --copy puts an image: its relative name under images/, else images/<id>_<file name>."""
    name = image.name if is_inside(image.name) else f"{image.image_id}_{PurePosixPath(image.name).name}"
    return f"images/{name}"


def ordered_splits(names: Iterable[str]) -> list[str]:
    """Split names in Karpathy's order, any others after them by name."""
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def planned_files(images: Sequence[ImportedImage], copy: bool) -> list[str]:
    splits = ordered_splits(im.split for im in images)
    files = [KARPATHY_NAME, *(f"annotations/captions_{s}.json" for s in splits), REPORT_NAME]
    return files + ([copy_name(im) for im in images] if copy else [])


def check_targets(out: Path, files: Sequence[str], previous: Earlier) -> None:
    """Refuse before writing anything if a file to write exists and is not the earlier import's
    (not listed, or changed since it was stamped)."""
    for name in files:
        target = out / name
        linked = [p for p in target.parents if p != out and out in p.parents and p.is_symlink()]
        if linked:
            raise CaptionerError(f"--out {out}: {linked[-1]} is a symbolic link; refusing to write "
                                 "through it")
        if (target.exists() or target.is_symlink()) and name not in previous:
            raise CaptionerError(f"--out {out}: {name} exists and was not written by an earlier "
                                 "import; refusing to overwrite it")
        if previous.get(name) and target.exists() and stamp(target) != previous[name]:
            raise CaptionerError(f"--out {out}: {name} changed since the earlier import wrote it; "
                                 "refusing to overwrite it (move it, or choose a new folder)")


def write_dataset(out: Path, images: Sequence[ImportedImage], report: dict, *, copy: bool,
                  previous: Earlier, source: str, fmt: str) -> list[str]:
    """Write the folder (created and locked by locked_folder); return the files written
    (relative to `out`)."""
    files = planned_files(images, copy)
    check_targets(out, files, previous)
    manifest = Manifest(KARPATHY_NAME, [f for f in files if f.startswith("annotations/")],
                        files=sorted(set(previous) | set(files)), source=source, format=fmt,
                        stamps={name: s for name, s in previous.items() if s and name not in files})
    write_manifest(out, manifest)
    if copy:
        _copy_images(out, images, previous)
    ids = caption_ids(images)
    write_json(out / KARPATHY_NAME, karpathy_json(out, images, ids, copy), indent=None)
    for name in manifest.captions_json:
        split = name.removeprefix("annotations/captions_").removesuffix(".json")
        subset = [im for im in images if im.split == split]
        write_json(out / name, coco_json(out, subset, ids, copy, source), indent=None)
    write_json(out / REPORT_NAME, report)
    _remove_stale(out, previous, set(files))
    manifest.files, manifest.complete = files, True
    manifest.stamps = {name: stamp(out / name) for name in files}
    write_manifest(out, manifest)
    return files


def _location(out: Path, image: ImportedImage, copy: bool) -> Path:
    return out / copy_name(image) if copy else image.path.absolute()


def caption_ids(images: Sequence[ImportedImage]) -> dict[int, list[int]]:
    """image id -> the ids of its captions: 1, 2, ... across all images (Karpathy's sentids and
    COCO's annotation ids alike)."""
    ids, start = {}, 1
    for image in images:
        ids[image.image_id] = list(range(start, start + len(image.captions)))
        start += len(image.captions)
    return ids


def karpathy_json(out: Path, images: Sequence[ImportedImage], caption_ids: dict[int, list[int]],
                  copy: bool) -> dict:
    """Karpathy's layout. In-place images get an absolute filepath: captioner joins
    root / filepath / filename, and joining onto an absolute path gives that path."""
    entries = []
    for n, image in enumerate(images):
        path = _location(out, image, copy)
        folder = path.parent.relative_to(out) if copy else path.parent
        ids = caption_ids[image.image_id]
        entries.append({
            "filepath": folder.as_posix(), "filename": path.name, "imgid": n,
            "cocoid": image.image_id, "split": image.split, "sentids": ids,
            "sentences": [{"tokens": t, "raw": c, "imgid": n, "sentid": i}
                          for c, t, i in zip(image.captions, image.tokens, ids)]})
    return {"dataset": "imported", "images": entries}


def coco_json(out: Path, images: Sequence[ImportedImage], caption_ids: dict[int, list[int]],
              copy: bool, source: str) -> dict:
    """COCO's captions layout: file_name relative to the folder for copies, else absolute."""
    records, annotations = [], []
    for image in images:
        record = {"id": image.image_id,
                  "file_name": copy_name(image) if copy else str(_location(out, image, copy))}
        if image.size is not None:
            record["width"], record["height"] = image.size
        records.append(record)
        annotations.extend({"id": i, "image_id": image.image_id, "caption": c}
                           for i, c in zip(caption_ids[image.image_id], image.captions))
    info = {"description": f"imported by captioner from {source}"}
    return {"info": info, "licenses": [], "type": "captions", "images": records,
            "annotations": annotations}


def _copy_images(out: Path, images: Sequence[ImportedImage], previous: Earlier) -> None:
    for image in images:
        name = copy_name(image)
        target, src = out / name, image.path.stat()
        if name in previous and target.is_file():
            have = target.stat()
            if (have.st_size, have.st_mtime_ns) == (src.st_size, src.st_mtime_ns):
                continue  # copied by the earlier import and unchanged since
        with atomic_path(target) as tmp:
            shutil.copy2(image.path, tmp)


def _remove_stale(out: Path, previous: Earlier, written: set[str]) -> None:
    """Remove what the earlier import wrote and this one did not, where it is still that import's."""
    stale = [name for name in previous if name not in written]
    left = remove_written(out, [name for name in stale if could_write(name)], previous)
    left += [name for name in stale if not could_write(name)]
    if left:
        say(f"note: left {len(left)} file(s) an earlier import listed in place, as they changed "
            f"since, are behind a symbolic link or are not the import's to remove (first: {left[0]})")
