"""Importing people's own captioned images (and Flickr8k/30k, COCO, Karpathy files) as a dataset
folder that `captioner train data.root=DIR` reads with no other data setting.

    SOURCE ─detect.py─► rows (formats.py) ─check.py─► usable captions ─► images found ─► splits, ids
        └─────────────── problems, each with its file and line ───────────► import_report.json
                                                      write.py ─► DIR (manifest.py names its files)

Imports only lower layers (data.tokenize, data.vocab, images, atomic); data/prepare.py reads the
manifest through manifest.py.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from captioner.data.importing.check import (
    Kept,
    Problems,
    check_captions,
    file_problem,
    image_folder,
    verify_images,
)
from captioner.data.importing.detect import FORMATS, read_source
from captioner.data.importing.formats import Location, Row, Source
from captioner.data.importing.report import ImportReport, split_sizes, spread, vocabulary_stats
from captioner.data.importing.splits import SPLIT_NAMES, image_ids, random_splits
from captioner.data.importing.textfile import check_encoding
from captioner.data.importing.write import ImportedImage, claim_folder, locked_folder, write_dataset
from captioner.errors import CaptionerError
from captioner.util.console import say, warn

__all__ = ["FORMATS", "ImportReport", "import_dataset"]

ImageFile = tuple[Path, tuple[int, int] | None]  # the file, and its size once decoded


def import_dataset(
    source: str | Path, out: str | Path, *, images: str | Path | None = None, fmt: str = "auto",
    split: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0, copy: bool = False,
    encoding: str | None = None, verify_images: bool = False, min_count: int = 5,
    allow_outside: bool = False,
) -> ImportReport:
    """Import the captions file (or dataset folder) `source` into the dataset folder `out`.

    Bad rows and missing or unreadable images are left out and reported, never fatal; a source
    with no usable row at all is a CaptionerError. Stage lines go to stderr. Images must lie
    inside the images folder after following links (else a captions file could make --copy
    take any file the user can read), unless `allow_outside`.
    """
    source, out = Path(source).expanduser(), Path(out).expanduser().absolute()
    images = Path(images).expanduser() if images else None
    _check_options(images, split, encoding, min_count)
    with _os_errors_in_one_line(out), locked_folder(out), _no_cyclic_gc():
        previous = claim_folder(out)  # refuse a folder we may not write before reading anything
        stages = _Stages()
        src = read_source(source, fmt, encoding)
        problems = Problems(str(src.path))
        for loc, reason, message in src.bad:
            problems.add(loc, reason, message)
        stages.done(f"read {src.path} ({src.format}): {len(src.rows)} captions, {len(src.bad)} bad rows")
        kept = check_captions(src.rows, problems)
        listed = _first_rows(src.rows)
        stages.done(f"checked captions: {sum(len(k.captions) for k in kept.values())} usable")
        base = image_folder(src.path, images, list(listed))
        inside = None if allow_outside else os.path.realpath(base)
        files, status = _image_files(listed, base, inside, kept, problems, verify_images)
        stages.done(f"checked {len(listed)} images under {base}: {status['found']} found, "
                    f"{status['image_missing']} missing, {status['image_unreadable']} unreadable")
        imported, origin = _assemble(src, kept, files, problems, split, seed)
        if not imported:
            raise CaptionerError(_nothing_usable(src, problems, base))
        report = _report(src, out, imported, problems, status, verify_images, min_count, origin)
        write_dataset(out, imported, report.to_json(), copy=copy, previous=previous,
                      source=str(src.path), fmt=src.format)
        stages.done(f"wrote {out}")
        _warn_unusable_splits(report.splits, origin, out)
        return report


def _warn_unusable_splits(splits: dict[str, int], origin: str, out: Path) -> None:
    """Training needs train and val images and evaluation test images: an empty one would only be
    refused later, by `captioner train`, with the import long forgotten."""
    empty = [name for name in SPLIT_NAMES if not splits.get(name)]
    if not empty:
        return
    fix = ("import again with --split 0.9,0.05,0.05 (any three fractions above 0)"
           if origin.startswith("random") else f"the source's own splits ({origin}) have none")
    warn(f"{out} has no {' or '.join(empty)} images: captioner train needs train and val images, "
         f"captioner evaluate test images; {fix}")


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Millions of rows, captions and token lists, none in a cycle: Python's cyclic collector
    would scan them all again and again as they grow (most of a 10^6-row import's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _os_errors_in_one_line(out: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:  # permissions, a full disk: one line, not a traceback
        raise CaptionerError(f"{err.filename or out}: {err.strerror or err}") from err


def _check_options(images: Path | None, split: Sequence[float], encoding: str | None,
                   min_count: int) -> None:
    if images is not None and not images.is_dir():
        raise CaptionerError(f"--images {images}: no such folder")
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise CaptionerError(f"split {tuple(split)}: expected three fractions (train, val, test) "
                             "that sum to 1")
    if encoding is not None:
        check_encoding(encoding)
    if min_count < 1:
        raise CaptionerError("min_count must be at least 1")


class _Stages:
    """One line per finished stage on stderr, with the seconds it took."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def done(self, message: str) -> None:
        now = time.perf_counter()
        say(f"{message} ({now - self.start:.1f} s)")
        self.start = now


def _first_rows(rows: Iterable[Row]) -> dict[str, Location]:
    """Every image a readable row names, with the row that names it first."""
    first: dict[str, Location] = {}
    for row in rows:
        first.setdefault(row.image, row.loc)
    return first


def _image_files(listed: dict[str, Location], base: Path, inside: str | None, kept: dict[str, Kept],
                 problems: Problems, verify: bool) -> tuple[dict[str, ImageFile], Counter]:
    """The usable image file of each listed image; status counts found / missing / unreadable."""
    status: Counter = Counter(found=0, image_missing=0, image_unreadable=0)
    files: dict[str, ImageFile] = {}
    for name, loc in listed.items():
        path = base / name  # an absolute name stays as it is
        problem = file_problem(path, inside)
        if problem is None:
            files[name] = (path, None)
        else:
            _image_problem(problems, status, loc, problem, kept.get(name))
    if verify and files:
        names = list(files)
        for name, (error, size) in zip(names, verify_images([files[n][0] for n in names])):
            if error is None:
                files[name] = (files[name][0], size)
            else:
                del files[name]
                _image_problem(problems, status, listed[name], ("image_unreadable", error), kept.get(name))
    status["found"] = len(listed) - status["image_missing"]
    return files, status


def _image_problem(problems: Problems, status: Counter, loc: Location, problem: tuple[str, str],
                   kept: Kept | None) -> None:
    reason, message = problem
    status["image_missing" if reason == "image_missing" else "image_unreadable"] += 1
    problems.add(loc, reason, message, captions=len(kept.captions) if kept else 0)


def _assemble(src: Source, kept: dict[str, Kept], files: dict[str, ImageFile], problems: Problems,
              fractions: Sequence[float], seed: int) -> tuple[list[ImportedImage], str]:
    """The images to write, each with its split and id, and where the splits came from."""
    usable = [name for name in kept if name in files]
    if src.splits is not None:
        splits, origin = {}, src.split_origin
        for name in usable:
            if name in src.splits:
                splits[name] = src.splits[name]
            else:
                problems.add(kept[name].loc, "no_split", f"{name}: in none of the split lists",
                             captions=len(kept[name].captions))
    else:
        splits = random_splits(usable, fractions, seed)
        origin = f"random {'/'.join(f'{f:g}' for f in fractions)}, seed {seed}"
    source_ids: dict[str, int] = {}
    for row in src.rows:
        if row.image_id is not None:
            source_ids.setdefault(row.image, row.image_id)
    ids = image_ids(list(splits), source_ids)
    imported = [ImportedImage(ids[name], name, files[name][0], split, kept[name].captions,
                              kept[name].tokens, files[name][1]) for name, split in splits.items()]
    return sorted(imported, key=lambda im: im.image_id), origin


def _nothing_usable(src: Source, problems: Problems, base: Path) -> str:
    reasons = ", ".join(f"{n} {r}" for r, n in problems.dropped.most_common()) or "no rows"
    hint = ""
    if problems.dropped and problems.dropped.most_common(1)[0][0] == "image_missing":
        hint = f"; images were looked for under {base}: pass their folder with --images"
    elif problems.dropped and problems.dropped.most_common(1)[0][0] == "outside_images":
        hint = (f"; images must lie under {base}: pass the folder holding them with --images, or "
                "--allow-outside")
    elif problems.listed:
        first = problems.listed[0]
        where = first.get("line", first.get("entry"))
        hint = f"; first: {where}: {first['message']}"
    return f"{src.path}: no usable row ({reasons}){hint}"


def _report(src: Source, out: Path, imported: Sequence[ImportedImage], problems: Problems,
            status: Counter, verified: bool, min_count: int, origin: str) -> ImportReport:
    kept = sum(len(im.captions) for im in imported)
    listed = status["found"] + status["image_missing"]
    return ImportReport(
        source=str(src.path), format=src.format, encoding=src.encoding, out=str(out),
        images_listed=listed, images_found=status["found"],
        images_missing=status["image_missing"], images_unreadable=status["image_unreadable"],
        images_verified=verified, images_kept=len(imported),
        captions_read=kept + sum(problems.dropped.values()), captions_kept=kept,
        captions_dropped=dict(problems.dropped.most_common()),
        captions_per_image=spread([len(im.captions) for im in imported]),
        words_per_caption=spread([len(t) for im in imported for t in im.tokens]),
        vocabulary=vocabulary_stats(imported, min_count), splits=split_sizes(imported),
        split_origin=origin, problems_total=problems.count,
        problems=sorted(problems.listed, key=lambda p: p.get("line", 0)))  # JSON entries: as read
