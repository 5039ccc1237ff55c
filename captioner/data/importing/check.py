"""The checks behind the import report: which captions and images are usable, and why not.

Every problem names the captions file and the line (or JSON entry) it comes from; a dropped
image counts its captions that were otherwise usable as dropped, under the image's reason.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from captioner.data.importing.formats import Location, Row
from captioner.errors import CaptionerError

# Longer is a run-on row (a lost quote or delimiter glued rows together), not a caption.
MAX_WORDS = 100
# Checked before tokenising: nltk's regexes take seconds on a megabyte and stop with a
# TimeoutError after 5 s on some 20 MB strings, so a caption this long never reaches them.
MAX_CHARS = 20 * MAX_WORDS
# Listed in import_report.json; past this many, only counted (a wrong format fails every row).
MAX_LISTED = 10_000
# Where the usual dataset layouts keep their images, relative to the captions file's folder.
IMAGE_FOLDERS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images",
                 "flickr30k-images", "train2014", "val2014")
SAMPLE = 200  # image names tried in each candidate folder
PARALLEL_FROM = 20_000  # captions; below this a process pool costs more than it saves


@dataclass
class Problems:
    file: str
    listed: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> captions left out
    count: int = 0

    def add(self, loc: Location, reason: str, message: str, captions: int = 1) -> None:
        self.dropped[reason] += captions
        self.count += 1
        if len(self.listed) < MAX_LISTED:
            where = {"line": loc} if isinstance(loc, int) else {"entry": loc}
            self.listed.append({"file": self.file, **where, "reason": reason, "message": message})


@dataclass
class Kept:
    """An image's usable captions, their tokens, and where its first row is."""

    loc: Location
    captions: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)


def cores() -> int:
    """CPUs this process may run on (fewer than os.cpu_count() in containers and under taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _tokenize_chunk(captions: Sequence[str]) -> list[list[str]]:
    from captioner.data.tokenize import tokenize  # nltk: imported when used, not by `captioner --help`

    return [tokenize(c) for c in captions]


def tokenize_all(captions: Sequence[str]) -> list[list[str]]:
    """Tokens of every caption, each word one shared string (a million captions' tokens are
    most of an import's memory). Plain captions are split here; the others go through nltk's PTB
    regexes (~130 us each, see benchmarks/import_speed.py), shared out over the cores when many."""
    from captioner.data.tokenize import plain_tokens

    tokens = [_shared(plain_tokens(c)) for c in captions]
    rest = [n for n, t in enumerate(tokens) if t is None]
    workers = cores()
    if workers == 1 or len(rest) < PARALLEL_FROM:
        done = iter(_tokenize_chunk([captions[n] for n in rest]))
        for n in rest:
            tokens[n] = _shared(next(done))
        return tokens  # type: ignore[return-value]
    size = -(-len(rest) // (4 * workers))
    with ProcessPoolExecutor(workers) as pool:
        chunks = [[captions[n] for n in rest[i:i + size]] for i in range(0, len(rest), size)]
        done = (caption for part in pool.map(_tokenize_chunk, chunks) for caption in part)
        for n in rest:
            tokens[n] = _shared(next(done))
    return tokens  # type: ignore[return-value]


def _shared(tokens: list[str] | None) -> list[str] | None:
    return None if tokens is None else [sys.intern(t) for t in tokens]


def check_captions(rows: Sequence[Row], problems: Problems) -> dict[str, Kept]:
    """image -> its usable captions: not empty, not run-on, not a repeat of an earlier row."""
    captions = [_one_spaced(row.caption) for row in rows]
    fits = [len(caption) <= MAX_CHARS for caption in captions]
    tokenized = iter(tokenize_all([c for c, fit in zip(captions, fits) if fit]))
    kept: dict[str, Kept] = {}
    seen: set[tuple[str, str]] = set()
    for row, caption, fit in zip(rows, captions, fits):
        tokens = next(tokenized) if fit else None
        if tokens is None:
            problems.add(row.loc, "overlong", f"{row.image}: caption of {len(caption)} characters "
                         f"(more than {MAX_CHARS}: a missing quote or delimiter?)")
        elif not tokens:
            problems.add(row.loc, "empty", f"{row.image}: empty caption")
        elif len(tokens) > MAX_WORDS:
            problems.add(row.loc, "overlong", f"{row.image}: caption of {len(tokens)} words "
                         f"(more than {MAX_WORDS}: a missing quote or delimiter?)")
        elif (row.image, caption) in seen:
            problems.add(row.loc, "duplicate", f"{row.image}: the same caption again")
        else:
            seen.add((row.image, caption))
            entry = kept.setdefault(row.image, Kept(row.loc))
            entry.captions.append(caption)
            entry.tokens.append(tokens)
    return kept


def _one_spaced(caption: str) -> str:
    spaced = " ".join(caption.split())
    return caption if spaced == caption else spaced  # the row's own string: no second copy


def image_folder(captions_file: Path, images: Path | None, names: Sequence[str]) -> Path:
    """The folder image names are relative to: --images, else the candidate holding the most of them."""
    if images is not None:
        return images
    bases = [captions_file.parent, captions_file.parent.parent]
    candidates = [d for base in dict.fromkeys(bases) for d in (base, *(base / f for f in IMAGE_FOLDERS))
                  if d.is_dir()]
    sample = sorted(names)[:SAMPLE]
    hits = [sum((d / name).is_file() for name in sample) for d in candidates]
    return candidates[hits.index(max(hits))]


# The first bytes of the formats Pillow reads that people keep photos in. Checked for every image,
# so that a captions file cannot make --copy take a key or a document under an image's name.
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00",
              b"MM\x00*", b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ", b"P1", b"P2", b"P3", b"P4",
              b"P5", b"P6")
IMAGE_KINDS = "JPEG, PNG, GIF, BMP, WebP, TIFF, PNM, JPEG 2000 or AVIF"


def is_image_header(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return True
    return head.startswith(SIGNATURES)


def file_problem(path: Path, inside: str | None) -> tuple[str, str] | None:
    """(reason, message) when the file is outside the folder `inside` (a real path; None: allowed
    anywhere), missing, not a regular file, empty or not an image; None when it may be an image."""
    problem = stat_problem(path)  # first: a missing file is reported as missing, wherever it is
    if problem is not None and problem[0] == "image_missing":
        return problem
    if inside is not None and not _is_under(_real_path(path), inside):
        return "outside_images", (f"{path}: outside the images folder {inside} (after following "
                                  "symbolic links); pass --allow-outside to take it")
    if problem is not None:
        return problem
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        return "image_unreadable", f"{path}: {err.strerror}"
    if not is_image_header(head):
        return "not_an_image", f"{path}: not an image file (expected {IMAGE_KINDS})"
    return None


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def _real_path(path: Path) -> str:
    """os.path.realpath(path), resolving each folder once for all the images in it."""
    text = os.path.normpath(path)
    folder, leaf = os.path.split(text)
    if os.path.islink(text):
        return os.path.realpath(text)
    return os.path.join(_real_folder(folder), leaf)


def stat_problem(path: Path) -> tuple[str, str] | None:
    """(reason, message) when the file is missing, not a file or empty; None when it may be an image."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "image_missing", f"{path}: no such file"
    except OSError as err:
        return "image_unreadable", f"{path}: {err.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return "image_unreadable", f"{path}: not a regular file"
    if info.st_size == 0:
        return "image_unreadable", f"{path}: empty file"
    if not os.access(path, os.R_OK):
        return "image_unreadable", f"{path}: permission denied"
    return None


Decoded = tuple[str | None, tuple[int, int] | None]  # (error, (width, height))


def _decode(path: Path) -> Decoded:
    from captioner.data.images import open_rgb

    try:
        return None, open_rgb(path).size
    except CaptionerError as err:
        return str(err), None


def verify_images(paths: Sequence[Path], workers: int | None = None) -> list[Decoded]:
    """Decode every image (in parallel): (error or None, (width, height) or None) for each."""
    from tqdm import tqdm

    workers = workers or cores()
    chunk = max(1, min(64, len(paths) // (4 * workers)))
    with ProcessPoolExecutor(workers) as pool, tqdm(
        total=len(paths), desc="decoding images", unit="img", file=sys.stderr,
        disable=not sys.stderr.isatty(),
    ) as bar:
        results = []
        for result in pool.map(_decode, paths, chunksize=chunk):
            results.append(result)
            bar.update()
    return results
